//! `${NAME}` references, expanded from an environment lookup the caller supplies.

use super::*;

pub(super) fn expand_value(
    v: &mut toml::Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match v {
        toml::Value::String(s) => *s = expand_env(s, env)?,
        toml::Value::Array(items) => {
            for item in items {
                expand_value(item, env)?;
            }
        }
        toml::Value::Table(t) => {
            for (_, item) in t.iter_mut() {
                expand_value(item, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Expand `${NAME}` references in one string. `$${` is a literal `${`.
pub(super) fn expand_env(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail.find('}').ok_or_else(|| ConfigError::Parse {
                path: None,
                message: format!("unterminated `${{` in the value `{text}`"),
            })?;
            let name = &tail[..end];
            let value = env(name).ok_or_else(|| ConfigError::MissingEnv {
                name: name.to_owned(),
            })?;
            out.push_str(&value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}
