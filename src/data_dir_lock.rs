//! One process per data directory. A node holds an exclusive lock on `<data dir>/lock` while
//! it runs and until it has sealed its store; `cohort debug` takes a shared one. So two nodes
//! never run on one directory (neither the log nor the store locks its own files, and two
//! writers would corrupt both), and `cohort debug` never reads a directory a node is writing.
//! The locks are advisory (`flock`), released by the kernel when the process ends, however it
//! ends: a crashed node leaves nothing to clean up.

use anyhow::Context as _;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Write as _};
use std::path::Path;

pub const LOCK_FILE: &str = "lock";

/// A held lock on a data directory; released when dropped.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// For a node about to run on `data_dir` (created if missing): refused while another
    /// process holds the directory. The file then says which process holds it.
    pub fn exclusive(data_dir: &Path) -> anyhow::Result<DataDirLock> {
        std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        let path = data_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => anyhow::bail!(
                "another process ({}) runs on the data directory {}: one node per data directory",
                holder(&mut file),
                data_dir.display()
            ),
            Err(TryLockError::Error(error)) => {
                return Err(error).with_context(|| format!("locking {}", path.display()))
            }
        }
        file.set_len(0)?;
        writeln!(file, "pid {}", std::process::id())?;
        Ok(DataDirLock { _file: file })
    }

    /// For reading `data_dir` offline: refused while a node runs on it. `None` if no node
    /// ever ran there with this lock (nothing to hold).
    pub fn shared(data_dir: &Path) -> anyhow::Result<Option<DataDirLock>> {
        let path = data_dir.join(LOCK_FILE);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error).with_context(|| format!("opening {}", path.display())),
        };
        match file.try_lock_shared() {
            Ok(()) => Ok(Some(DataDirLock { _file: file })),
            Err(TryLockError::WouldBlock) => anyhow::bail!(
                "a node ({}) runs on {}: `cohort debug` reads a stopped node's data directory; stop the node first",
                holder(&mut file),
                data_dir.display()
            ),
            Err(TryLockError::Error(error)) => Err(error).with_context(|| format!("locking {}", path.display())),
        }
    }
}

/// What the lock file says of its holder.
fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    match text.trim() {
        "" => "process unknown".to_owned(),
        said => said.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_node_per_directory_and_no_offline_reading_while_it_runs() {
        let dir = tempfile::tempdir().unwrap();
        assert!(DataDirLock::shared(dir.path()).unwrap().is_none(), "never locked: nothing to hold");
        let node = DataDirLock::exclusive(dir.path()).unwrap();
        let second = DataDirLock::exclusive(dir.path()).unwrap_err().to_string();
        assert!(second.contains(&format!("pid {}", std::process::id())), "{second}");
        let reader = DataDirLock::shared(dir.path()).unwrap_err().to_string();
        assert!(reader.contains("stop the node first"), "{reader}");
        drop(node);
        let reader = DataDirLock::shared(dir.path()).unwrap().expect("the file exists");
        assert!(DataDirLock::shared(dir.path()).unwrap().is_some(), "readers share");
        assert!(DataDirLock::exclusive(dir.path()).is_err(), "no node starts while it is read");
        drop(reader);
        DataDirLock::exclusive(dir.path()).unwrap();
    }
}
