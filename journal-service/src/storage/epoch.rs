//! The durable fencing state of a stream: the highest epoch its node has seen, in a small file
//! replaced atomically (temp file, fsync, rename, fsync of the directory).

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use super::{fsync_dir, OpenError};

const FILE_NAME: &str = "epoch";
const TEMP_NAME: &str = "epoch.tmp";

/// Reads the fenced epoch of the stream in `dir` (0 when never fenced).
pub fn load(dir: &Path) -> Result<u64, OpenError> {
    let path = dir.join(FILE_NAME);
    match fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|_| OpenError::Corrupt {
            path,
            offset: 0,
            reason: format!("epoch file holds {text:?}, not a number"),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(OpenError::Io { path, source }),
    }
}

/// Durably replaces the fenced epoch of the stream in `dir`; a crash leaves the old or the new value.
pub fn store(dir: &Path, epoch: u64) -> io::Result<()> {
    let temp = dir.join(TEMP_NAME);
    let mut file = crate::private_fs::create(&temp)?;
    file.write_all(format!("{epoch}\n").as_bytes())?;
    file.sync_all()?;
    fs::rename(&temp, dir.join(FILE_NAME))?;
    fsync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), 0);
        store(dir.path(), 7).unwrap();
        assert_eq!(load(dir.path()).unwrap(), 7);
        store(dir.path(), 9).unwrap();
        assert_eq!(load(dir.path()).unwrap(), 9);
        assert!(!dir.path().join(TEMP_NAME).exists());
    }

    #[test]
    fn garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE_NAME), "x").unwrap();
        assert!(matches!(load(dir.path()), Err(OpenError::Corrupt { .. })));
    }
}
