//! Options of the file store and their URL form.

use std::path::{Component, Path, PathBuf};

use cloakroom_core::{Error, Result, StoreUrl, DEFAULT_MAX_RECORD_BYTES};
use serde::Deserialize;

/// How a [`FileStore`](crate::FileStore) is set up.
///
/// URL form: `file:///abs/dir?durable=false&max_record_bytes=1048576`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default = "FileOptions::defaults", deny_unknown_fields)]
pub struct FileOptions {
    /// The directory holding every namespace: absolute, and not `/`.
    /// Created on demand.
    #[serde(skip)]
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
    /// Defaults for a store rooted at `root`: durable, records up to
    /// [`DEFAULT_MAX_RECORD_BYTES`].
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileOptions {
            root: root.into(),
            ..Self::defaults()
        }
    }

    /// Every option at its default, the root not yet known.
    fn defaults() -> Self {
        FileOptions {
            root: PathBuf::new(),
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

    /// Read `file:///abs/dir[?durable=true|false][&max_record_bytes=N]`.
    ///
    /// The path must be absolute (two processes given the same URL must
    /// agree on the directory whatever their working directory), so
    /// `file:relative/dir` is refused rather than resolved against the
    /// current directory. A host other than `localhost` is refused too: the
    /// store only works on a local file system.
    pub fn from_url(url: &StoreUrl) -> Result<Self> {
        if url.scheme() != "file" {
            return Err(Error::Config(format!(
                "file store URL must start with file://, not {}:",
                url.scheme()
            )));
        }
        if !url.has_authority() {
            return Err(Error::Config(
                "file store URL must look like file:///absolute/dir".into(),
            ));
        }
        let local = matches!(url.hosts(), [] | [_]) && url.hosts().iter().all(|h| h == "localhost");
        if url.userinfo().is_some() || !local {
            return Err(Error::Config(
                "file store URL must not name a host; use file:///absolute/path".into(),
            ));
        }
        let options = FileOptions {
            root: without_dot_segments(Path::new(url.path())),
            ..url.options()?
        };
        options.validate()?;
        Ok(options)
    }

    /// Check the options, whether they came from a URL or the setters.
    pub(crate) fn validate(&self) -> Result<()> {
        if !self.root.is_absolute() || self.root.parent().is_none() {
            return Err(Error::Config(format!(
                "the file store root must be an absolute directory other than /, not {:?}",
                self.root
            )));
        }
        Ok(())
    }
}

/// `path` with `.` and `..` resolved as a URL resolves them (`..` at the
/// root stays at the root), so `file:///tmp/../` names `/`, and is refused.
fn without_dot_segments(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileOptions> {
        FileOptions::from_url(&StoreUrl::parse(text)?)
    }

    #[test]
    fn parses_paths_and_options() {
        let o = parse("file:///var/lib/app?durable=false&max_record_bytes=10").unwrap();
        assert_eq!(o.root, PathBuf::from("/var/lib/app"));
        assert!(!o.durable);
        assert_eq!(o.max_record_bytes, 10);
        let defaults = parse("file:///tmp/x").unwrap();
        assert_eq!(defaults, FileOptions::new("/tmp/x"));
        assert!(defaults.durable);
        assert_eq!(defaults.max_record_bytes, DEFAULT_MAX_RECORD_BYTES);
        let spaced = parse("file:///tmp/a%20b").unwrap();
        assert_eq!(spaced.root, PathBuf::from("/tmp/a b"));
        let local = parse("file://localhost/tmp/x").unwrap();
        assert_eq!(local.root, PathBuf::from("/tmp/x"));
        let dotted = parse("file:///tmp/x/../y/./z").unwrap();
        assert_eq!(dotted.root, PathBuf::from("/tmp/y/z"));
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "file://server/share",
            "file://user@localhost/tmp/x",
            "file://localhost,other/tmp/x",
            "sqlite:///x.db",
            "file:///tmp/x?durable=maybe",
            "file:///tmp/x?max_record_bytes=lots",
            "file:///tmp/x?colour=red",
            "file:///",
            "file://",
            "file:///tmp/..",
            "not a url",
            "file:relative/dir",
            "file:/absolute/without/authority",
        ] {
            assert!(matches!(parse(bad), Err(Error::Config(_))), "accepted {bad}");
        }
    }

    #[test]
    fn the_builder_is_held_to_the_same_rules() {
        assert!(FileOptions::new("/tmp/x").validate().is_ok());
        for bad in ["", "/", "relative/dir"] {
            assert!(
                matches!(FileOptions::new(bad).validate(), Err(Error::Config(_))),
                "accepted {bad:?}"
            );
        }
    }
}
