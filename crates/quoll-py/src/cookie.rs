//! The cluster secret every link between workers is authenticated with
//! (see `quoll_core::handshake` and `docs/security.md`).
//!
//! Where it comes from, first found wins: `--cookie-file PATH`, the
//! environment variable `QUOLL_COOKIE`, else `~/.quoll/cookie`, which is
//! created (mode 0600, in a 0700 directory) with 32 random bytes the first
//! time a worker needs it, as Erlang does with `~/.erlang.cookie`. So
//! unmodified Wallaroo command lines work on one machine with no new flag;
//! across machines the operator copies one file.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why the secret can't be had.
#[derive(Debug, thiserror::Error)]
pub enum CookieError {
    #[error("can't read the cluster secret from {what} {}: {source}", .path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the cluster secret in {what} {} is empty", .path.display())]
    Empty { what: &'static str, path: PathBuf },
    #[error("can't create the cluster secret {}: {source}; give one with --cookie-file PATH or QUOLL_COOKIE", .path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no home directory (HOME is not set) for ~/.quoll/cookie; give the cluster secret with --cookie-file PATH or QUOLL_COOKIE")]
    NoHome,
}

/// The cluster secret, and where it came from (for messages).
pub struct Cookie {
    pub secret: Vec<u8>,
    pub source: String,
}

/// Finds (or on first use creates) the cluster secret.
pub fn load(cookie_file: Option<&str>) -> Result<Cookie, CookieError> {
    if let Some(path) = cookie_file {
        let secret = read(Path::new(path), "--cookie-file")?;
        return Ok(Cookie {
            secret,
            source: format!("--cookie-file {path}"),
        });
    }
    if let Ok(value) = std::env::var("QUOLL_COOKIE") {
        if !value.trim().is_empty() {
            return Ok(Cookie {
                secret: value.trim().as_bytes().to_vec(),
                source: "QUOLL_COOKIE".into(),
            });
        }
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or(CookieError::NoHome)?;
    let path = Path::new(&home).join(".quoll").join("cookie");
    if !path.exists() {
        create(&path)?;
    }
    let secret = read(&path, "file")?;
    Ok(Cookie {
        secret,
        source: path.display().to_string(),
    })
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, CookieError> {
    let text = fs::read(path).map_err(|source| CookieError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let secret = text.trim_ascii().to_vec();
    if secret.is_empty() {
        return Err(CookieError::Empty {
            what,
            path: path.to_path_buf(),
        });
    }
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "the cluster secret {} can be read by other users (mode {:o}); run: chmod 600 {}",
                path.display(),
                meta.permissions().mode() & 0o777,
                path.display()
            );
        }
    }
    Ok(secret)
}

/// Creates `path` with a fresh random secret, atomically: a complete file
/// appears under its name or nothing does, and of several workers starting
/// at once exactly one creates it (the others read it).
fn create(path: &Path) -> Result<(), CookieError> {
    let err = |source| CookieError::Create {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(err)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err)?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| err(io::Error::other(e.to_string())))?;
    let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = dir.join(format!(".cookie.{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(err)?;
    // A hard link fails if the name exists: another worker won the race.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(
                "created the cluster secret {} (copy it to every machine of the cluster)",
                path.display()
            );
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_with_mode_0600_and_reads_it_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(".quoll").join("cookie");
        create(&path).expect("created");
        let first = fs::read(&path).expect("read");
        assert_eq!(first.len(), 64);
        assert_eq!(
            fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        create(&path).expect("a second creation is a no-op");
        assert_eq!(
            fs::read(&path).expect("read"),
            first,
            "the first secret stays"
        );
        assert_eq!(read(&path, "file").expect("secret"), first);
    }

    #[test]
    fn an_empty_cookie_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c");
        fs::write(&path, "\n").expect("write");
        assert!(matches!(
            read(&path, "--cookie-file"),
            Err(CookieError::Empty { .. })
        ));
    }
}
