//! Why a window's rows cannot be located: the one error of [`super::index`]
//! and [`super::positions`], which both read data files.

use deltalake::DeltaTableError;

/// Why positions cannot be found.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// Reading the table's log or a file failed.
    #[error(transparent)]
    Delta(#[from] DeltaTableError),
    /// A data file cannot be read as Parquet.
    #[error("reading data file {path}: {source}")]
    Parquet {
        /// The file.
        path: String,
        /// Parquet's error.
        #[source]
        source: deltalake::parquet::errors::ParquetError,
    },
    /// A key column is missing from a data file, or not of a key's type.
    #[error("data file {path}: key column `{column}`: {problem}")]
    Column {
        /// The file.
        path: String,
        /// The column.
        column: String,
        /// What is wrong.
        problem: String,
    },
    /// A file's deletion vector cannot be read.
    #[error("the deletion vector of {path}: {source}")]
    Vector {
        /// The file.
        path: String,
        /// The kernel's error.
        #[source]
        source: buoyant_kernel::Error,
    },
    /// The keys themselves cannot be encoded for comparison.
    #[error("the window's keys: {0}")]
    Keys(#[source] deltalake::arrow::error::ArrowError),
}
