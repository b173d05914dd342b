//! The membership file, `<app>-<worker>.cluster`: one record holding the
//! caller's member list as an opaque blob, written crash-safely (a reader
//! sees the old file or the new one) and checked on read (checksum, owner,
//! nothing after the record).
//!
//! And the left marker, `<app>-<worker>.left`: a worker that left its
//! cluster (a shrink) writes it before it deletes its checkpoint files, so
//! that a restart of its command at any moment after finds one or the
//! other, and never joins the cluster again by mistake.
//!
//! ```text
//! { format_version, app, worker, members }
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::records::{check_version, decode, frame_into, Payload, RecordReader};
use super::{
    corrupt, left_path, membership_path, truncated, write_atomic, wrong_owner, StoreError,
    FORMAT_VERSION,
};

/// The one record of a membership file. The version must stay first.
#[derive(Debug, Serialize, Deserialize)]
struct ClusterFile<'a> {
    format_version: u32,
    app: &'a str,
    worker: &'a str,
    members: &'a [u8],
}

impl Payload for ClusterFile<'_> {}

/// Replaces `<app>-<worker>.cluster` with `members`, crash-safely.
pub fn write_membership(
    dir: &Path,
    app: &str,
    worker: &str,
    members: &[u8],
) -> Result<(), StoreError> {
    let path = membership_path(dir, app, worker);
    let mut bytes = Vec::with_capacity(members.len() + app.len() + worker.len() + 32);
    frame_into(
        &mut bytes,
        &ClusterFile {
            format_version: FORMAT_VERSION,
            app,
            worker,
            members,
        },
    )
    .map_err(|problem| StoreError::Invalid {
        path: path.clone(),
        problem,
    })?;
    write_atomic(dir, &path, &bytes)
}

/// The bytes [`write_membership`] stored, checksum and owner checked;
/// `None` if there is no membership file.
pub fn read_membership(dir: &Path, app: &str, worker: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let path = membership_path(dir, app, worker);
    let Some(mut reader) = RecordReader::open(&path)? else {
        return Ok(None);
    };
    let members = {
        let Some((record, offset, payload)) = reader.next_good()? else {
            return Err(truncated(&path, "is empty"));
        };
        check_version(&path, payload, false)?;
        let file: ClusterFile<'_> = decode(&path, record, offset, payload)?;
        if file.app != app || file.worker != worker {
            return Err(wrong_owner(&path, (file.app, file.worker), (app, worker)));
        }
        file.members.to_vec()
    };
    if !reader.at_end() {
        return Err(corrupt(
            &path,
            format!(
                "it has {} bytes after its record",
                reader.len - reader.offset
            ),
        ));
    }
    Ok(Some(members))
}

/// Writes `<app>-<worker>.left` with `text`, crash-safely; returns its path.
pub fn mark_left(dir: &Path, app: &str, worker: &str, text: &str) -> Result<PathBuf, StoreError> {
    let path = left_path(dir, app, worker);
    write_atomic(dir, &path, text.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint_store::test_support::{assert_names_file, tmp, APP, W};
    use crate::checkpoint_store::{tmp_path, StoreError};
    use std::fs;

    #[test]
    fn membership_round_trips_and_is_checked() {
        let d = tmp();
        let dir = d.path();
        assert_eq!(read_membership(dir, APP, W).unwrap(), None);
        write_membership(dir, APP, W, b"w1@a:1,w2@b:2").unwrap();
        write_membership(dir, APP, W, b"w1@a:1,w2@b:2,w3@c:3").unwrap();
        assert_eq!(
            read_membership(dir, APP, W).unwrap().unwrap(),
            b"w1@a:1,w2@b:2,w3@c:3"
        );
        assert!(!tmp_path(&membership_path(dir, APP, W)).exists());
        let p = membership_path(dir, APP, W);
        let bytes = fs::read(&p).unwrap();
        for cut in 0..bytes.len() {
            fs::write(&p, &bytes[..cut]).unwrap();
            let err = read_membership(dir, APP, W).unwrap_err();
            assert_names_file(&err, &p);
        }
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            fs::write(&p, &bad).unwrap();
            assert_names_file(&read_membership(dir, APP, W).unwrap_err(), &p);
        }
        fs::write(&p, &bytes).unwrap();
        // "worker_1" shares the file name of "worker 1".
        assert_eq!(p, membership_path(dir, APP, "worker_1"));
        let err = read_membership(dir, APP, "worker_1").unwrap_err();
        assert!(matches!(err, StoreError::WrongOwner { .. }), "{err}");
    }

    #[test]
    fn the_left_marker_outlives_the_removal_of_the_workers_files() {
        let d = tmp();
        let dir = d.path();
        write_membership(dir, APP, W, b"w1@a:1").unwrap();
        let path = mark_left(dir, APP, W, "left\n").unwrap();
        assert_eq!(path, left_path(dir, APP, W));
        assert!(!tmp_path(&path).exists());
        let removed = crate::checkpoint_store::remove_all(dir, APP, W).unwrap();
        assert_eq!(removed, vec![membership_path(dir, APP, W)]);
        assert_eq!(fs::read(&path).unwrap(), b"left\n");
    }
}
