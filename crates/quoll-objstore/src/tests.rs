//! The mirror against object_store's in-memory store: what a worker
//! writes comes back on an empty disk, markers are create-only, compaction
//! and rollback prune the store, bad objects are named.

use super::*;
use object_store::memory::InMemory;
use quoll_core::checkpoint_store::{CheckpointKind, CheckpointWriter};

const APP: &str = "word count";
const W: &str = "worker1";
const URL: &str = "s3://bucket/run";

fn mirror(store: &Arc<InMemory>, worker: &str) -> Mirror {
    let store: Arc<dyn ObjectStore> = store.clone();
    Mirror::new(store, "run", URL, APP, worker).expect("mirror")
}

/// Writes `worker`'s part `id` (full, or a delta on `parent`) holding `keys`.
fn write_part(dir: &Path, worker: &str, id: u64, parent: Option<u64>, keys: &[(&str, &str)]) {
    let kind = match parent {
        Some(parent) => CheckpointKind::Delta { parent },
        None => CheckpointKind::Full,
    };
    let mut w = CheckpointWriter::create(dir, APP, worker, id, kind).expect("create");
    for (k, v) in keys {
        w.entry(1, k.as_bytes(), v.as_bytes());
    }
    w.source(0, format!("offset {id}").as_bytes());
    w.commit().expect("commit");
}

fn names(store: &Arc<InMemory>) -> Vec<String> {
    let m = mirror(store, W);
    let mut all = m.list("").expect("list");
    all.sort();
    all
}

#[test]
fn an_empty_disk_recovers_from_the_store_alone() {
    let store = Arc::new(InMemory::new());
    let first = tempfile::tempdir().expect("tmp");
    let m = mirror(&store, W);
    write_part(first.path(), W, 1, None, &[("a", "1"), ("b", "1")]);
    m.upload_part(first.path(), 1).expect("upload 1");
    write_part(first.path(), W, 2, Some(1), &[("a", "2")]);
    m.upload_part(first.path(), 2).expect("upload 2");
    m.record_generation(1).expect("generation");
    m.record_commit(1, 1, None).expect("commit 1");
    m.record_commit(2, 1, Some(1)).expect("commit 2");
    // A part of checkpoint 3 is in the store but 3 never committed.
    write_part(first.path(), W, 3, Some(2), &[("b", "3")]);
    m.upload_part(first.path(), 3).expect("upload 3");

    let second = tempfile::tempdir().expect("tmp");
    let fresh = mirror(&store, W);
    assert_eq!(fresh.hydrate(second.path(), true).expect("hydrate"), 3);
    let state = CommitLog::read(second.path(), APP)
        .expect("log")
        .expect("a log");
    assert_eq!(state.last_committed, Some(2));
    assert_eq!(state.generation, 1);
    fresh.discard_later(Some(2)).expect("discard");
    let image = checkpoint_store::load(second.path(), APP, W, 2).expect("load 2");
    assert_eq!(image.get(1, b"a"), Some(&b"2".to_vec()));
    assert_eq!(image.get(1, b"b"), Some(&b"1".to_vec()));
    assert_eq!(image.sources.get(&0), Some(&b"offset 2".to_vec()));
    let left = names(&store);
    assert!(
        !left
            .iter()
            .any(|n| n.ends_with("ckpt-00000000000000000003")),
        "{left:?}"
    );
    // Only the newest commit marker is kept.
    let commits: Vec<_> = left.iter().filter(|n| n.contains(COMMIT_INFIX)).collect();
    assert_eq!(commits.len(), 1, "{left:?}");
}

#[test]
fn hydrate_drops_local_files_the_store_lacks() {
    let store = Arc::new(InMemory::new());
    let dir = tempfile::tempdir().expect("tmp");
    // Written locally, never uploaded: it never counted.
    write_part(dir.path(), W, 4, None, &[("x", "1")]);
    let m = mirror(&store, W);
    assert_eq!(m.hydrate(dir.path(), true).expect("hydrate"), 0);
    assert!(checkpoint_store::list(dir.path(), APP, W)
        .expect("list")
        .is_empty());
    assert!(CommitLog::read(dir.path(), APP).expect("log").is_none());
}

#[test]
fn two_coordinators_cannot_commit_the_same_checkpoint() {
    let store = Arc::new(InMemory::new());
    let a = mirror(&store, "initializer");
    let b = mirror(&store, "initializer");
    a.record_commit(7, 2, None).expect("first commit");
    // Our own marker found again (a retried request) is not a conflict.
    a.record_commit(7, 2, None).expect("own marker");
    let err = b.record_commit(7, 2, None).expect_err("second coordinator");
    assert!(matches!(err, Error::Claimed { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("s3://bucket/run/word_count-initializer.commit-00000000000000000007"),
        "{text}"
    );
    a.record_generation(3).expect("generation");
    let err = b.record_generation(3).expect_err("same generation");
    assert!(err.to_string().contains("already exists"), "{err}");
}

#[test]
fn compaction_and_pruning_carry_over_to_the_store() {
    let store = Arc::new(InMemory::new());
    let dir = tempfile::tempdir().expect("tmp");
    let m = mirror(&store, W);
    write_part(dir.path(), W, 1, None, &[("a", "1")]);
    m.upload_part(dir.path(), 1).expect("upload");
    write_part(dir.path(), W, 2, Some(1), &[("b", "2")]);
    m.upload_part(dir.path(), 2).expect("upload");
    let compacted = checkpoint_store::compact(dir.path(), APP, W, 2)
        .expect("compact")
        .is_some();
    assert!(compacted);
    checkpoint_store::remove_older_than(dir.path(), APP, W, 2).expect("prune");
    m.after_commit(dir.path(), 2, compacted)
        .expect("after commit");
    let left = names(&store);
    assert_eq!(left, vec![m.part_name(2)]);
    // The store's copy of 2 is the full file: it loads alone.
    let other = tempfile::tempdir().expect("tmp");
    m.hydrate(other.path(), false).expect("hydrate");
    let image = checkpoint_store::load(other.path(), APP, W, 2).expect("load");
    assert_eq!(image.files_read.len(), 1);
    assert_eq!(image.len(), 2);
}

#[test]
fn corrupt_objects_are_named() {
    let store = Arc::new(InMemory::new());
    let dir = tempfile::tempdir().expect("tmp");
    let m = mirror(&store, W);
    write_part(dir.path(), W, 1, None, &[("a", "1")]);
    let mut bytes = fs::read(dir.path().join(m.part_name(1))).expect("read");
    let last = bytes.len() - 3;
    bytes[last] ^= 0xff;
    m.block_on(store.put(&m.path(&m.part_name(1)), PutPayload::from(bytes)))
        .expect("put");
    let other = tempfile::tempdir().expect("tmp");
    m.hydrate(other.path(), false).expect("hydrate");
    let err = checkpoint_store::load(other.path(), APP, W, 1).expect_err("corrupt");
    let err = m.object_error(err);
    let text = err.to_string();
    assert!(matches!(err, Error::Object { .. }), "{text}");
    assert!(
        text.contains("s3://bucket/run/word_count-worker1.ckpt-00000000000000000001"),
        "{text}"
    );
    assert!(text.contains("worker 'worker1'"), "{text}");

    let marker = m.marker_name(COMMIT_INFIX, 1);
    m.block_on(store.put(&m.path(&marker), PutPayload::from(vec![0u8; MARKER_LEN])))
        .expect("put");
    let err = m.hydrate(other.path(), true).expect_err("corrupt marker");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(&marker), "{err}");
}

#[test]
fn clean_shutdown_empties_the_store() {
    let store = Arc::new(InMemory::new());
    let dir = tempfile::tempdir().expect("tmp");
    let m = mirror(&store, W);
    let other = mirror(&store, "worker2");
    write_part(dir.path(), W, 1, None, &[("a", "1")]);
    write_part(dir.path(), "worker2", 1, None, &[("a", "1")]);
    m.upload_part(dir.path(), 1).expect("upload");
    other.upload_part(dir.path(), 1).expect("upload");
    m.record_generation(1).expect("generation");
    m.record_commit(1, 1, None).expect("commit");
    m.remove_all(true).expect("remove");
    assert_eq!(names(&store), vec![other.part_name(1)]);
}

#[test]
fn urls_and_working_copies() {
    assert_eq!(parse_url("s3://b/x/y/"), Some(("b".into(), "x/y".into())));
    assert_eq!(parse_url("s3://b"), Some(("b".into(), String::new())));
    assert_eq!(parse_url("/var/lib/quoll"), None);
    let dir = local_dir("s3://b/x y/z", "worker 1");
    assert!(dir.ends_with("b/x_y/z/worker_1"), "{}", dir.display());
    let err = Mirror::s3("s3:///x", APP, W).err().expect("no bucket");
    assert!(err.to_string().contains("bucket name is missing"), "{err}");
}

#[test]
fn the_membership_file_comes_back_on_an_empty_disk_and_goes_on_a_clean_shutdown() {
    let store = Arc::new(InMemory::new());
    let first = tempfile::tempdir().expect("tmp");
    let init = mirror(&store, "initializer");
    checkpoint_store::write_membership(first.path(), APP, "initializer", b"joined: worker9")
        .expect("write");
    init.upload_membership(first.path()).expect("upload");

    let second = tempfile::tempdir().expect("tmp");
    mirror(&store, "initializer")
        .hydrate(second.path(), true)
        .expect("hydrate");
    assert_eq!(
        checkpoint_store::read_membership(second.path(), APP, "initializer").expect("read"),
        Some(b"joined: worker9".to_vec())
    );

    // A store without one removes a stale local file: the store is the truth.
    init.remove_all(true).expect("remove all");
    assert_eq!(names(&store), Vec::<String>::new());
    mirror(&store, "initializer")
        .hydrate(second.path(), true)
        .expect("hydrate");
    assert_eq!(
        checkpoint_store::read_membership(second.path(), APP, "initializer").expect("read"),
        None
    );
}

#[test]
fn a_left_marker_is_found_from_any_disk_and_outlives_the_parts() {
    let store = Arc::new(InMemory::new());
    let first = tempfile::tempdir().expect("tmp");
    let m = mirror(&store, W);
    write_part(first.path(), W, 1, None, &[("a", "1")]);
    m.upload_part(first.path(), 1).expect("upload");
    let other = tempfile::tempdir().expect("tmp");
    assert!(!m.left_marker(other.path()).expect("look up"));

    checkpoint_store::mark_left(first.path(), APP, W, "left\n").expect("mark");
    m.upload_left_marker(first.path()).expect("upload marker");
    m.remove_all(false).expect("remove parts");
    let left = names(&store);
    assert_eq!(left.len(), 1, "{left:?}");

    let again = mirror(&store, W);
    assert!(again.left_marker(other.path()).expect("look up"));
    let url = again.left_marker_url();
    assert!(url.starts_with(URL) && url.ends_with(".left"), "{url}");
    // Copied to the new disk, so the next restart finds it locally.
    assert!(checkpoint_store::left_path(other.path(), APP, W).exists());
    // Another worker's marker is not this one's.
    assert!(!mirror(&store, "worker2")
        .left_marker(other.path())
        .expect("look up"));
}
