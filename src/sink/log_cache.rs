//! A small cache of `_delta_log` commit files under delta-rs' object store, so a
//! commit file is fetched once per process, not once per reader.
//!
//! Before each commit a writer catches up on the commits that landed since its
//! last one: the Delta kernel reads each new commit file (protocol and metadata),
//! delta-rs reads it again (the file actions of its snapshot), and the offset
//! store a third time (the `txn` actions). After its own commit, delta-rs reads
//! the file it has just written back twice. With several replicas on one table
//! that was about three GETs per foreign commit and two per own commit.
//!
//! A commit file `_delta_log/<version>.json` never changes once written: Delta
//! writes it with put-if-absent, so the version's content is fixed by the
//! writer that won it. That makes it safe to keep: the file a writer put
//! (conditionally, so it won) and the files it read whole are kept, within a
//! byte bound shared by every table of the process, least recently used
//! evicted. Everything else (`_last_checkpoint`, checkpoints, data files, ranged
//! or conditional reads, listings) goes to the store untouched.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use deltalake::logstore::object_store::path::Path;
use deltalake::logstore::object_store::{
    Attributes, CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    RenameOptions, Result,
};
use futures::stream::{self, BoxStream, StreamExt as _};

/// What the cache may hold across all tables of the process. A commit of ours
/// is a few KiB (its txn actions and add actions); one over 4096 partitions is
/// about 400 KiB. Entries are useful for the moments between a writer's reads
/// of one catch-up, so a small bound covers many tables and replicas.
pub const DEFAULT_CAPACITY_BYTES: usize = 16 * 1024 * 1024;

/// The commit files kept, least recently used first out, within a byte bound.
#[derive(Debug)]
pub struct CommitFiles {
    entries: lru::LruCache<String, (Bytes, ObjectMeta)>,
    bytes: usize,
    capacity: usize,
}

impl CommitFiles {
    /// An empty cache holding at most `capacity` bytes of file content.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: lru::LruCache::unbounded(),
            bytes: 0,
            capacity,
        }
    }

    /// The content and metadata kept under `key`, marked as just used.
    pub fn get(&mut self, key: &str) -> Option<(Bytes, ObjectMeta)> {
        self.entries.get(key).cloned()
    }

    /// Keep `bytes` under `key`, evicting the least recently used entries to
    /// stay within the bound. A file larger than the bound is not kept.
    pub fn insert(&mut self, key: String, bytes: Bytes, meta: ObjectMeta) {
        self.remove(&key);
        if bytes.len() > self.capacity {
            return;
        }
        self.bytes += bytes.len();
        self.entries.put(key, (bytes, meta));
        while self.bytes > self.capacity {
            match self.entries.pop_lru() {
                Some((_, (b, _))) => self.bytes -= b.len(),
                None => break,
            }
        }
    }

    /// Forget `key` (the file was deleted or replaced).
    pub fn remove(&mut self, key: &str) {
        if let Some((b, _)) = self.entries.pop(key) {
            self.bytes -= b.len();
        }
    }

    /// Bytes of content held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

static SHARED: LazyLock<Arc<Mutex<CommitFiles>>> =
    LazyLock::new(|| Arc::new(Mutex::new(CommitFiles::new(DEFAULT_CAPACITY_BYTES))));

/// Whether `path` is a commit file: `.../_delta_log/<20 digits>.json`.
fn is_commit_file(path: &Path) -> bool {
    let s = path.as_ref();
    let Some((dir, name)) = s.rsplit_once('/') else {
        return false;
    };
    let Some(version) = name.strip_suffix(".json") else {
        return false;
    };
    (dir == "_delta_log" || dir.ends_with("/_delta_log"))
        && version.len() == 20
        && version.bytes().all(|b| b.is_ascii_digit())
}

/// A read with nothing but the path: the whole current object.
fn is_plain(o: &GetOptions) -> bool {
    o.if_match.is_none()
        && o.if_none_match.is_none()
        && o.if_modified_since.is_none()
        && o.if_unmodified_since.is_none()
        && o.range.is_none()
        && o.version.is_none()
        && !o.head
}

/// An object store that keeps the commit files read and written through it in
/// the process-wide cache, and passes everything else to `inner`.
pub struct LogCache {
    inner: Arc<dyn ObjectStore>,
    /// Prefix of the cache keys: which store (scheme and bucket) a path is in.
    scope: String,
    cache: Arc<Mutex<CommitFiles>>,
}

impl LogCache {
    /// Wrap the root store of `url`'s bucket, sharing the process-wide cache.
    pub fn wrap(inner: Arc<dyn ObjectStore>, url: &url::Url) -> Self {
        Self::with_cache(inner, url, SHARED.clone())
    }

    /// Wrap `inner` with a cache of its own (for tests).
    pub fn with_cache(
        inner: Arc<dyn ObjectStore>,
        url: &url::Url,
        cache: Arc<Mutex<CommitFiles>>,
    ) -> Self {
        let scope = format!("{}://{}/", url.scheme(), url.host_str().unwrap_or_default());
        Self {
            inner,
            scope,
            cache,
        }
    }

    fn key(&self, path: &Path) -> Option<String> {
        is_commit_file(path).then(|| format!("{}{}", self.scope, path.as_ref()))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, CommitFiles> {
        // A panic while holding the lock leaves the cache consistent (every
        // method keeps `bytes` in step before it can panic): use it.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forget(&self, path: &Path) {
        if let Some(key) = self.key(path) {
            self.cache().remove(&key);
        }
    }
}

fn result_of(bytes: Bytes, meta: ObjectMeta, attributes: Attributes) -> GetResult {
    let range = 0..bytes.len() as u64;
    GetResult {
        payload: GetResultPayload::Stream(stream::once(async move { Ok(bytes) }).boxed()),
        meta,
        range,
        attributes,
    }
}

impl fmt::Display for LogCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogCache({})", self.inner)
    }
}

impl fmt::Debug for LogCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogCache({:?})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for LogCache {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let Some(key) = self.key(location) else {
            return self.inner.put_opts(location, payload, opts).await;
        };
        // Only a put-if-absent that succeeded says what the version holds.
        let create = matches!(opts.mode, PutMode::Create);
        self.cache().remove(&key);
        let kept = payload.clone();
        let result = self.inner.put_opts(location, payload, opts).await?;
        if create {
            let bytes = Bytes::from(kept);
            let meta = ObjectMeta {
                location: location.clone(),
                last_modified: chrono::Utc::now(),
                size: bytes.len() as u64,
                e_tag: result.e_tag.clone(),
                version: result.version.clone(),
            };
            self.cache().insert(key, bytes, meta);
        }
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.forget(location);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let key = match self.key(location) {
            Some(key) if is_plain(&options) => key,
            _ => return self.inner.get_opts(location, options).await,
        };
        if let Some((bytes, meta)) = self.cache().get(&key) {
            return Ok(result_of(bytes, meta, Attributes::default()));
        }
        let got = self.inner.get_opts(location, options).await?;
        let (meta, attributes) = (got.meta.clone(), got.attributes.clone());
        let bytes = got.bytes().await?;
        self.cache().insert(key, bytes.clone(), meta.clone());
        Ok(result_of(bytes, meta, attributes))
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let cache = self.cache.clone();
        let scope = self.scope.clone();
        let forgetting = locations.inspect(move |p| {
            if let Ok(p) = p
                && is_commit_file(p)
            {
                let key = format!("{scope}{}", p.as_ref());
                cache.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
            }
        });
        self.inner.delete_stream(forgetting.boxed())
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.forget(to);
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.forget(from);
        self.forget(to);
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::logstore::object_store::memory::InMemory;
    use deltalake::logstore::object_store::{GetRange, ObjectStoreExt as _};

    fn meta(path: &str, size: usize) -> ObjectMeta {
        ObjectMeta {
            location: Path::from(path),
            last_modified: chrono::Utc::now(),
            size: size as u64,
            e_tag: None,
            version: None,
        }
    }

    #[test]
    fn only_commit_files_are_kept() {
        for yes in [
            "t/_delta_log/00000000000000000007.json",
            "_delta_log/00000000000000000000.json",
        ] {
            assert!(is_commit_file(&Path::from(yes)), "{yes}");
        }
        for no in [
            "t/_delta_log/_last_checkpoint",
            "t/_delta_log/00000000000000000010.checkpoint.parquet",
            "t/_delta_log/00000000000000000010.crc",
            "t/_delta_log/_commits/00000000000000000010.3a0d.json",
            "t/_delta_log/0000000000000000001.json",
            "t/part-00000.json",
            "t/x_delta_log/00000000000000000007.json",
        ] {
            assert!(!is_commit_file(&Path::from(no)), "{no}");
        }
    }

    #[test]
    fn the_byte_bound_evicts_the_least_recently_used() {
        let mut c = CommitFiles::new(10);
        let put = |c: &mut CommitFiles, k: &str, n: usize| {
            c.insert(k.into(), Bytes::from(vec![0u8; n]), meta(k, n))
        };
        put(&mut c, "a", 4);
        put(&mut c, "b", 4);
        assert!(c.get("a").is_some()); // a is now the most recent
        put(&mut c, "c", 4); // 12 > 10: b goes
        assert!(c.get("b").is_none());
        assert!(c.get("a").is_some() && c.get("c").is_some());
        assert_eq!(c.bytes(), 8);
        // Replacing a key counts it once; a file over the bound is not kept.
        put(&mut c, "a", 2);
        assert_eq!(c.bytes(), 6);
        put(&mut c, "huge", 11);
        assert!(c.get("huge").is_none());
        assert_eq!(c.bytes(), 6);
        c.remove("c");
        assert_eq!(c.bytes(), 2);
    }

    fn store() -> (Arc<InMemory>, LogCache, Arc<Mutex<CommitFiles>>) {
        let inner = Arc::new(InMemory::new());
        let cache = Arc::new(Mutex::new(CommitFiles::new(1 << 20)));
        let url = url::Url::parse("s3://bucket/t").unwrap();
        let wrapped = LogCache::with_cache(inner.clone(), &url, cache.clone());
        (inner, wrapped, cache)
    }

    #[tokio::test]
    async fn a_commit_written_or_read_is_served_from_the_cache() {
        let (inner, store, cache) = store();
        let commit = Path::from("t/_delta_log/00000000000000000001.json");
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        store
            .put_opts(&commit, PutPayload::from_static(b"{\"txn\":1}\n"), opts)
            .await
            .unwrap();
        // Gone from the server, still answered: the read came from the cache.
        inner.delete(&commit).await.unwrap();
        let got = store.get(&commit).await.unwrap();
        assert_eq!(got.range, 0..10);
        assert_eq!(got.bytes().await.unwrap().as_ref(), b"{\"txn\":1}\n");
        // A ranged read is the server's (and fails here: the object is gone).
        let ranged = GetOptions {
            range: Some(GetRange::Bounded(0..2)),
            ..Default::default()
        };
        assert!(store.get_opts(&commit, ranged).await.is_err());

        // A commit read whole is kept; one deleted through the store is forgotten.
        let other = Path::from("t/_delta_log/00000000000000000002.json");
        inner
            .put(&other, PutPayload::from_static(b"x\n"))
            .await
            .unwrap();
        assert_eq!(
            store
                .get(&other)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .as_ref(),
            b"x\n"
        );
        assert_eq!(cache.lock().unwrap().bytes(), 12);
        store.delete(&other).await.unwrap();
        assert_eq!(cache.lock().unwrap().bytes(), 10);
        assert!(store.get(&other).await.is_err());
    }

    #[tokio::test]
    async fn mutable_files_and_overwrites_are_never_kept() {
        let (inner, store, cache) = store();
        let last = Path::from("t/_delta_log/_last_checkpoint");
        store
            .put(&last, PutPayload::from_static(b"{}"))
            .await
            .unwrap();
        store.get(&last).await.unwrap();
        // An overwriting put does not say what the version holds for good.
        let commit = Path::from("t/_delta_log/00000000000000000003.json");
        store
            .put(&commit, PutPayload::from_static(b"a"))
            .await
            .unwrap();
        assert_eq!(cache.lock().unwrap().bytes(), 0);
        inner.delete(&last).await.unwrap();
        assert!(store.get(&last).await.is_err());
    }
}
