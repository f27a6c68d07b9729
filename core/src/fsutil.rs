//! Writing files that hold keys: atomically, with the mode set at creation.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Writes `contents` to `path` via a temporary file and a rename, creating
/// it with `mode` (0600 for private keys) so it is never briefly readable.
///
/// The temporary file is new (`O_CREAT | O_EXCL`, a random name beside
/// `path`), so a file or symlink planted under that name is never written
/// through, and its mode is always `mode`. On any failure (a full disk,
/// say) it is removed: `path` is either its old self or complete. The
/// directory is synced after the rename so the new name survives a crash.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = temp_name(path);
    let result = write_new(&tmp, contents, mode).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    sync_dir(path);
    Ok(())
}

/// Takes an exclusive lock on `<path>` with extension `lock` (created if
/// missing) and holds it until the returned file is dropped, so that
/// read-modify-write cycles of `path` by several processes on one host
/// (`signet revoke`, `signet trust rotate`) do not lose each other's changes.
pub fn lock_beside(path: &Path) -> Result<std::fs::File, (PathBuf, std::io::Error)> {
    let lock_path = path.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| (lock_path.clone(), e))?;
    lock.lock().map_err(|e| (lock_path, e))?;
    Ok(lock)
}

fn temp_name(path: &Path) -> PathBuf {
    let mut r = [0u8; 6];
    crate::crypto::random_bytes(&mut r);
    let name = path
        .file_name()
        .map_or_else(|| "signet".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.{}.tmp", hex::encode(r)))
}

fn write_new(tmp: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(tmp)?;
    f.write_all(contents)?;
    f.sync_all()
}

/// Best effort: not every filesystem lets a directory be synced.
fn sync_dir(path: &Path) {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_with_the_mode_and_never_through_a_planted_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Only the file itself is left: no temporary files.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("key.pem")]);
    }
}
