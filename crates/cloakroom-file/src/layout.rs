//! Where things live on disk, and walking them in id order.
//!
//! ```text
//! <root>/<namespace>/<shard>/<id>          the record (see `format`)
//! <root>/<namespace>/<shard>/<id>.lock     the session lock: a lease, see `lease`
//! <root>/<namespace>/<shard>/.mutex        short write sections of the shard
//! <root>/<namespace>/<shard>/.<id>.*.tmp   a record being written
//! <root>/<namespace>/principals/<digest>/<id>
//!                                          an empty marker: the record <id> may
//!                                          belong to the principal, see `index`
//! <root>-owners/<owner>                    one per open store, see `liveness`
//! ```
//!
//! Every name in a shard directory is created, replaced and removed only
//! under the shard's mutex (see `record_file::ShardMutex`); only reads of
//! records go without it. That is what lets a sweep remove a shard directory
//! that has emptied: under the mutex nothing else can be adding to it.
//!
//! `shard` is the first two characters of the id: 4,096 directories, so a
//! million sessions make about 250 files per directory, and walking the shards
//! in name order then each shard in name order lists ids in their sort order,
//! which is what lets a cursor be simply the last id returned.
//!
//! `principals` is longer than a shard name, so walking the shards (listing,
//! counting, sweeping) never enters it.
//!
//! Only a [`SessionId`], a [`Namespace`] (both strictly parsed, neither can
//! hold `/`, `.` or a NUL) and a principal's [`digest`](Principal::digest)
//! (43 characters of base64url, whatever the principal holds) ever become
//! path components, and names read back from disk are only acted on after
//! the same parse, so a file that is not a record of ours is never read as
//! one, nor deleted.
//!
//! Names differing only in case are different sessions: the store needs a
//! case-sensitive file system (Linux file systems are; macOS's default is not).

use std::ffi::OsString;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use cloakroom_core::{Namespace, Principal, SessionId, SessionKey};

const LOCK_SUFFIX: &str = ".lock";
const MUTEX_NAME: &str = ".mutex";
const TEMP_SUFFIX: &str = ".tmp";
const SHARD_LEN: usize = 2;
/// The index directory of a namespace; not a shard name (see `shards_from`).
const PRINCIPALS_DIR: &str = "principals";

/// Paths of one store.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    root: PathBuf,
}

/// The paths of one session.
#[derive(Clone, Debug)]
pub(crate) struct SessionPaths {
    pub shard: PathBuf,
    pub data: PathBuf,
    pub lock: PathBuf,
}

impl SessionPaths {
    /// A fresh temporary path beside the record: the process id and a counter
    /// make it unique among every process writing to this directory.
    pub fn temp(&self, id: &SessionId) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        self.shard.join(format!(
            ".{}.{}.{n}{TEMP_SUFFIX}",
            id.as_str(),
            std::process::id()
        ))
    }
}

impl Layout {
    pub fn new(root: PathBuf) -> Self {
        Layout { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn namespace_dir(&self, namespace: &Namespace) -> PathBuf {
        self.root.join(namespace.as_str())
    }

    /// The directory of a namespace's principal index.
    pub fn principals_dir(&self, namespace: &Namespace) -> PathBuf {
        self.namespace_dir(namespace).join(PRINCIPALS_DIR)
    }

    /// The marker directory of one principal: named by its digest, never by
    /// its text.
    pub fn principal_dir(&self, namespace: &Namespace, principal: &Principal) -> PathBuf {
        self.principals_dir(namespace).join(principal.digest())
    }

    pub fn session(&self, key: &SessionKey) -> SessionPaths {
        let shard = self.namespace_dir(&key.namespace).join(shard_of(&key.id));
        SessionPaths {
            data: shard.join(key.id.as_str()),
            lock: shard.join(format!("{}{LOCK_SUFFIX}", key.id.as_str())),
            shard,
        }
    }
}

fn shard_of(id: &SessionId) -> &str {
    // Ids are 43 ASCII characters, so the first two are a valid prefix.
    &id.as_str()[..SHARD_LEN]
}

/// The write mutex file of a shard directory.
pub(crate) fn mutex_path(shard: &Path) -> PathBuf {
    shard.join(MUTEX_NAME)
}

/// Create `dir` and its parents, private to the owner.
pub(crate) fn create_dirs(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// The shard directory names of a namespace that may hold ids after
/// `after`, in order. A missing namespace has none.
pub(crate) fn shards_from(namespace_dir: &Path, after: Option<&SessionId>) -> io::Result<Vec<String>> {
    let entries = match fs::read_dir(namespace_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let first = after.map(shard_of);
    let mut shards = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        let valid = name.len() == SHARD_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if valid && first.is_none_or(|f| name >= f) {
            shards.push(name.to_owned());
        }
    }
    shards.sort_unstable();
    Ok(shards)
}

/// What one shard directory holds, sorted by id.
#[derive(Debug, Default)]
pub(crate) struct ShardEntries {
    /// Ids with a record file.
    pub records: Vec<SessionId>,
    /// Ids with a lock file, whether or not they have a record.
    pub locks: Vec<SessionId>,
    /// Leftover temporary files (a writer that crashed mid-write).
    pub temps: Vec<OsString>,
    /// Names that are not ours (nor the shard mutex): never touched, and
    /// they keep the directory from being removed.
    pub foreign: usize,
}

impl ShardEntries {
    /// Nothing but (at most) the shard mutex is left.
    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty() && self.locks.is_empty() && self.temps.is_empty() && self.foreign == 0
    }
}

/// Read one shard directory. Names that are not ours are ignored.
pub(crate) fn read_shard(shard: &Path) -> io::Result<ShardEntries> {
    let entries = match fs::read_dir(shard) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ShardEntries::default()),
        Err(e) => return Err(e),
    };
    let mut out = ShardEntries::default();
    for entry in entries {
        let os_name = entry?.file_name();
        let Some(name) = os_name.to_str() else {
            out.foreign += 1;
            continue;
        };
        if let Ok(id) = SessionId::parse(name) {
            out.records.push(id);
        } else if let Some(id) = name
            .strip_suffix(LOCK_SUFFIX)
            .and_then(|s| SessionId::parse(s).ok())
        {
            out.locks.push(id);
        } else if name.starts_with('.') && name.ends_with(TEMP_SUFFIX) {
            out.temps.push(os_name);
        } else if name != MUTEX_NAME {
            out.foreign += 1;
        }
    }
    out.records.sort_unstable();
    out.locks.sort_unstable();
    Ok(out)
}

/// The ids marked in a principal's marker directory, sorted; a missing
/// directory marks none. Names that are not ids are not ours and ignored.
pub(crate) fn read_markers(dir: &Path) -> io::Result<Vec<SessionId>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut ids = Vec::new();
    for entry in entries {
        if let Some(id) = entry?.file_name().to_str().and_then(|n| SessionId::parse(n).ok()) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_root() {
        let layout = Layout::new(PathBuf::from("/srv/s"));
        let key = SessionKey::new(Namespace::new("app").unwrap(), SessionId::generate());
        let p = layout.session(&key);
        let id = key.id.as_str();
        assert_eq!(p.data, PathBuf::from(format!("/srv/s/app/{}/{id}", &id[..2])));
        assert_eq!(
            p.lock,
            PathBuf::from(format!("/srv/s/app/{}/{id}.lock", &id[..2]))
        );
        assert!(p.temp(&key.id).starts_with(&p.shard));
        assert_ne!(p.temp(&key.id), p.temp(&key.id));
        let principal = Principal::new("../../etc/passwd").unwrap();
        assert_eq!(
            layout.principal_dir(&key.namespace, &principal),
            PathBuf::from(format!("/srv/s/app/principals/{}", principal.digest()))
        );
    }

    #[test]
    fn the_index_directory_is_not_a_shard() {
        let dir = std::env::temp_dir().join(format!("cloakroom-layout-{}", SessionId::generate()));
        create_dirs(&dir.join(PRINCIPALS_DIR)).unwrap();
        create_dirs(&dir.join("Ab")).unwrap();
        let shards = shards_from(&dir, None);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(shards.unwrap(), vec!["Ab".to_owned()]);
    }
}
