//! Options of the file store and their URL form.

use std::path::{Path, PathBuf};

use cloakroom_core::{Error, Result};

/// Default size limit of one encoded record.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;

/// How a [`FileStore`](crate::FileStore) is set up.
///
/// URL form: `file:///abs/dir?durable=false&max_record_bytes=1048576`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileOptions {
    /// The directory holding every namespace. Created on demand.
    pub root: PathBuf,
    /// fsync each written file and its directory before a write returns, so
    /// an acknowledged save survives a power cut. On by default; turning it
    /// off keeps atomicity (a reader still never sees a partial file) but a
    /// crash may lose the last writes.
    pub durable: bool,
    /// Largest encoded record accepted ([`Error::TooLarge`] beyond).
    pub max_record_bytes: usize,
}

impl FileOptions {
    /// Defaults for a store rooted at `root`: durable, 4 MiB records.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileOptions {
            root: root.into(),
            durable: true,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }

    /// Turn fsync of files and directories on or off.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Set the largest accepted record.
    pub fn max_record_bytes(mut self, limit: usize) -> Self {
        self.max_record_bytes = limit;
        self
    }

    /// Parse `file:///abs/dir[?durable=true|false][&max_record_bytes=N]`.
    ///
    /// The path must be absolute (two processes given the same URL must
    /// agree on the directory whatever their working directory).
    pub fn from_url(text: &str) -> Result<Self> {
        // The URL parser turns `file:dir` into `file:///dir`; a relative path
        // silently made absolute would put sessions somewhere unexpected.
        if !text.starts_with("file://") {
            return Err(Error::Config(
                "file store URL must look like file:///absolute/dir".into(),
            ));
        }
        let url = url::Url::parse(text).map_err(|e| Error::Config(format!("file store URL: {e}")))?;
        if url.scheme() != "file" {
            return Err(Error::Config(format!(
                "file store URL must start with file://, not {}:",
                url.scheme()
            )));
        }
        if url.host_str().is_some_and(|h| !h.is_empty() && h != "localhost") {
            return Err(Error::Config(
                "file store URL must not name a host; use file:///absolute/path".into(),
            ));
        }
        let root = url
            .to_file_path()
            .map_err(|()| Error::Config("file store URL must hold an absolute path".into()))?;
        if !Path::new(&root).is_absolute() || root.as_os_str().len() <= 1 {
            return Err(Error::Config(
                "file store URL must hold an absolute directory other than /".into(),
            ));
        }
        let mut options = FileOptions::new(root);
        for (name, value) in url.query_pairs() {
            match &*name {
                "durable" => options.durable = parse_bool(&value)?,
                "max_record_bytes" => {
                    options.max_record_bytes = value
                        .parse()
                        .map_err(|_| Error::Config(format!("max_record_bytes: not a number: {value:?}")))?;
                }
                other => return Err(Error::Config(format!("file store URL: unknown option {other:?}"))),
            }
        }
        Ok(options)
    }
}

fn parse_bool(value: &str) -> Result<bool> {
    match value {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => Err(Error::Config(format!(
            "durable: expected true or false, got {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_options() {
        let o = FileOptions::from_url("file:///var/lib/app?durable=false&max_record_bytes=10").unwrap();
        assert_eq!(o.root, PathBuf::from("/var/lib/app"));
        assert!(!o.durable);
        assert_eq!(o.max_record_bytes, 10);
        assert!(FileOptions::from_url("file:///tmp/x").unwrap().durable);
        let spaced = FileOptions::from_url("file:///tmp/a%20b").unwrap();
        assert_eq!(spaced.root, PathBuf::from("/tmp/a b"));
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "file://server/share",
            "sqlite:///x.db",
            "file:///tmp/x?durable=maybe",
            "file:///tmp/x?colour=red",
            "file:///",
            "not a url",
            "file:relative/dir",
        ] {
            assert!(
                matches!(FileOptions::from_url(bad), Err(Error::Config(_))),
                "accepted {bad}"
            );
        }
    }
}
