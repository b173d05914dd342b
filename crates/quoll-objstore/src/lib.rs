//! A worker's checkpoint files mirrored to S3-compatible object storage, so
//! a cluster recovers after a machine dies with its disk.
//!
//! # Design
//!
//! The files keep the formats and the crash-safe local protocol of
//! [`quoll_core::checkpoint_store`]: a worker writes, loads and compacts a
//! **local working copy** (a directory of its own, see [`local_dir`]), and
//! this crate mirrors it to a bucket and prefix. The store is the truth:
//!
//! - A part file counts as written only once its object is in the store
//!   ([`Mirror::upload_part`] returns after the PUT succeeded); the object
//!   is named like the file, `<prefix>/<app>-<worker>.ckpt-<N:020>`.
//! - A checkpoint is complete exactly when its **commit marker**
//!   `<prefix>/<app>-initializer.commit-<N:020>` exists. Markers are
//!   written create-only (`PutMode::Create`, S3's `If-None-Match: *`), so
//!   two coordinators can never both commit checkpoint N; a generation is
//!   claimed the same way with `<app>-initializer.generation-<G:020>`. A
//!   marker holds the number, a per-process nonce (so a retry that finds
//!   its own earlier write is not taken for a rival) and a CRC32.
//! - At start-up [`Mirror::hydrate`] makes the working copy equal to the
//!   store: it downloads this worker's part objects, deletes local part
//!   files the store lacks, and on the initializer rebuilds the local
//!   commit log from the newest markers. Recovery on a machine with an
//!   empty disk therefore loads from the store alone. While the store
//!   can't be reached it waits, saying why, and retries.
//! - What records a membership change is mirrored too, so growing,
//!   shrinking and rebalancing survive the loss of a disk: the
//!   initializer's membership file (`<app>-initializer.cluster`, uploaded
//!   by [`Mirror::upload_membership`] before any worker hears of the
//!   change, downloaded by `hydrate`) and a leaver's left marker
//!   (`<app>-<worker>.left`, uploaded by [`Mirror::upload_left_marker`]
//!   before its part objects are deleted, looked up by
//!   [`Mirror::left_marker`]). Both are named like their local files.
//! - After a commit, a compacted file is uploaded again, then objects the
//!   working copy no longer has (superseded deltas, older fulls, older
//!   markers) are deleted. A local file whose upload failed is remembered
//!   and nothing is deleted from the store until it is uploaded, so the
//!   store's chains never lose a link.
//!
//! # Outages
//!
//! Every request has a timeout and a short retry budget
//! ([`REQUEST_TIMEOUT`], [`RETRY_BUDGET`]). A part or commit marker that
//! can't be written fails that checkpoint with an [`Error::Store`] naming
//! the worker, the checkpoint and the object; processing goes on and the
//! next checkpoint tries again. Only steps that must not be skipped (the
//! start-up copy, claiming a generation during recovery) wait for the store.
//!
//! # Invariants
//!
//! - Objects are written whole (one PUT) and read whole; downloads go to
//!   `*.tmp`, are fsynced and renamed, so a working copy file is never
//!   partial. Downloaded files are checked by the core's readers
//!   (checksums, owner, id) when loaded; a bad one is reported with its
//!   object name by [`Mirror::object_error`].
//! - No object of this worker with an id at or above the newest committed
//!   checkpoint is deleted except by [`Mirror::discard_later`] during a
//!   rollback (those checkpoints never completed).
//! - Calls block; they must not be made from inside an async task (the
//!   mirror runs its requests on a small runtime of its own).

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjPath;
use object_store::{
    ClientConfigKey, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
};
use quoll_core::checkpoint_store::{self, sanitize, CommitLog, CommitRecord, StoreError};
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::warn;

/// One request gives up after this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries of one operation stop after this long.
pub const RETRY_BUDGET: Duration = Duration::from_secs(8);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Steps that wait for the store try again this often.
const WAIT_RETRY: Duration = Duration::from_secs(2);

const CKPT_INFIX: &str = ".ckpt-";
const COMMIT_INFIX: &str = "-initializer.commit-";
const GENERATION_INFIX: &str = "-initializer.generation-";
const MARKER_LEN: usize = 20;
/// Mirrors made by this process, mixed into the nonce.
static MIRRORS: AtomicU64 = AtomicU64::new(0);

/// What went wrong, naming the worker and the object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The working copy (the core's error names the local file).
    #[error(transparent)]
    Local(#[from] StoreError),
    /// A request to the store failed or timed out.
    #[error("worker '{worker}': object {object}: can't {action}: {source}")]
    Store {
        worker: String,
        object: String,
        action: String,
        #[source]
        source: Box<object_store::Error>,
    },
    /// A file downloaded from the store is bad; `source` says how and
    /// names its local copy.
    #[error(
        "worker '{worker}': object {object}: {source} (with an object store, the resilience \
         directory is the app's objects under the --resilience-dir prefix together with the \
         local working copy in $QUOLL_CACHE_DIR)"
    )]
    Object {
        worker: String,
        object: String,
        #[source]
        source: Box<StoreError>,
    },
    /// A commit or generation marker that is not ours already exists.
    #[error(
        "worker '{worker}': object {object} already exists: another coordinator already \
         recorded {what}; two initializers must not share a --resilience-dir"
    )]
    Claimed {
        worker: String,
        object: String,
        what: String,
    },
    /// A marker object fails its checksum or has the wrong size.
    #[error("worker '{worker}': object {object} is corrupt: {problem}")]
    Corrupt {
        worker: String,
        object: String,
        problem: String,
    },
    /// `--resilience-dir s3://...` is malformed or the client can't be built.
    #[error("--resilience-dir {url}: {problem}")]
    Config { url: String, problem: String },
}

/// `s3://bucket/prefix` split; `None` if `dir` is not an `s3://` URL.
pub fn parse_url(dir: &str) -> Option<(String, String)> {
    let rest = dir.strip_prefix("s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    Some((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

/// The working copy of `worker` for store URL `url`:
/// `$QUOLL_CACHE_DIR` (else `.quoll-cache` in the working directory)
/// `/<bucket>/<prefix>/<worker>`, every part sanitized like file names.
pub fn local_dir(url: &str, worker: &str) -> PathBuf {
    let root = std::env::var_os("QUOLL_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".quoll-cache"));
    let (bucket, prefix) = parse_url(url).unwrap_or_default();
    let mut dir = root.join(sanitize(&bucket));
    for part in prefix.split('/').filter(|p| !p.is_empty()) {
        dir.push(sanitize(part));
    }
    dir.join(sanitize(worker))
}

/// One worker's mirror: the store, the prefix, the names.
pub struct Mirror {
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    /// `s3://bucket/prefix`, for messages.
    url: String,
    app: String,
    worker: String,
    /// Working copy files whose object is stale (an upload failed).
    stale: Mutex<BTreeSet<String>>,
    nonce: [u8; 8],
    handle: tokio::runtime::Handle,
    _rt: OwnRuntime,
}

/// The mirror's runtime, shut down without blocking when dropped (dropping
/// a runtime inside an async context would panic).
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Mirror {
    /// The S3 store of `url` (`s3://bucket/prefix`), endpoint and
    /// credentials from the standard `AWS_*` environment variables.
    pub fn s3(url: &str, app: &str, worker: &str) -> Result<Self, Error> {
        let config = |problem: String| Error::Config {
            url: url.to_string(),
            problem,
        };
        let (bucket, prefix) =
            parse_url(url).ok_or_else(|| config("not an s3://bucket/prefix URL".into()))?;
        if bucket.is_empty() {
            return Err(config("the bucket name is missing".into()));
        }
        let retry = RetryConfig {
            max_retries: 2,
            retry_timeout: RETRY_BUDGET,
            ..RetryConfig::default()
        };
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                format!("{}s", REQUEST_TIMEOUT.as_secs()),
            )
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                format!("{}s", CONNECT_TIMEOUT.as_secs()),
            )
            .with_retry(retry)
            .build()
            .map_err(|e| config(e.to_string()))?;
        Self::new(Arc::new(store), &prefix, url, app, worker)
    }

    /// A mirror on any store (tests use the in-memory one).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        url: &str,
        app: &str,
        worker: &str,
    ) -> Result<Self, Error> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("quoll-objstore")
            .enable_all()
            .build()
            .map_err(|e| Error::Config {
                url: url.to_string(),
                problem: format!("can't start the object store client's runtime: {e}"),
            })?;
        let mut nonce = [0u8; 8];
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 40)
            ^ MIRRORS.fetch_add(1, Ordering::Relaxed).rotate_right(8);
        nonce.copy_from_slice(&seed.to_le_bytes());
        Ok(Mirror {
            store,
            prefix: ObjPath::from(prefix),
            url: url.trim_end_matches('/').to_string(),
            app: app.to_string(),
            worker: worker.to_string(),
            stale: Mutex::new(BTreeSet::new()),
            nonce,
            handle: rt.handle().clone(),
            _rt: OwnRuntime(Some(rt)),
        })
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.handle.block_on(f)
    }

    fn path(&self, name: &str) -> ObjPath {
        self.prefix.clone().join(name)
    }

    /// The object's full name, for messages.
    pub fn object_url(&self, name: &str) -> String {
        if self.prefix.as_ref().is_empty() || self.url.ends_with(self.prefix.as_ref()) {
            format!("{}/{name}", self.url)
        } else {
            format!("{}/{}/{name}", self.url, self.prefix)
        }
    }

    fn store_err(&self, name: &str, action: impl Into<String>, e: object_store::Error) -> Error {
        Error::Store {
            worker: self.worker.clone(),
            object: self.object_url(name),
            action: action.into(),
            source: Box::new(e),
        }
    }

    /// Gives a core error about a working copy file the object's name.
    pub fn object_error(&self, e: StoreError) -> Error {
        let name = e
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string);
        match name {
            Some(name) if !matches!(e, StoreError::Io { .. }) => Error::Object {
                worker: self.worker.clone(),
                object: self.object_url(&name),
                source: Box::new(e),
            },
            _ => Error::Local(e),
        }
    }

    fn stem(&self) -> String {
        format!("{}-{}", sanitize(&self.app), sanitize(&self.worker))
    }

    fn part_name(&self, id: u64) -> String {
        format!("{}{CKPT_INFIX}{id:020}", self.stem())
    }

    fn marker_name(&self, infix: &str, n: u64) -> String {
        format!("{}{infix}{n:020}", sanitize(&self.app))
    }

    /// Names of the objects under the prefix that start with `start`.
    fn list(&self, start: &str) -> Result<Vec<String>, Error> {
        let names = self.block_on(async {
            let mut stream = self.store.list(Some(&self.prefix));
            let mut names = Vec::new();
            while let Some(meta) = stream.next().await {
                let meta = meta?;
                if let Some(name) = meta.location.filename() {
                    if name.starts_with(start) {
                        names.push(name.to_string());
                    }
                }
            }
            Ok::<_, object_store::Error>(names)
        });
        names.map_err(|e| self.store_err(&format!("{start}*"), "list", e))
    }

    /// `(id, name)` of the objects named `<start><20 digits>`.
    fn list_ids(&self, start: &str) -> Result<Vec<(u64, String)>, Error> {
        let mut ids: Vec<(u64, String)> = self
            .list(start)?
            .into_iter()
            .filter_map(|name| parse_id(&name, start).map(|id| (id, name)))
            .collect();
        ids.sort();
        Ok(ids)
    }

    fn delete(&self, name: &str, why: &str) -> Result<(), Error> {
        match self.block_on(self.store.delete(&self.path(name))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_err(name, format!("delete ({why})"), e)),
        }
    }

    fn get(&self, name: &str) -> Result<Bytes, Error> {
        self.block_on(async { self.store.get(&self.path(name)).await?.bytes().await })
            .map_err(|e| self.store_err(name, "download", e))
    }

    /// Is there an object `name`?
    fn exists(&self, name: &str) -> Result<bool, Error> {
        match self.block_on(self.store.head(&self.path(name))) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.store_err(name, "look up", e)),
        }
    }

    /// The name of this worker's local file `path` (a membership file or a
    /// left marker), which is also its object's name.
    fn name_of(path: &Path) -> String {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    // ------------------------------------------------------------ start-up

    /// Makes the working copy `dir` what the store holds; waits (and says
    /// so) while the store can't be reached. Returns the number of part
    /// objects downloaded.
    pub fn hydrate(&self, dir: &Path, initializer: bool) -> Result<usize, Error> {
        self.wait_for_store("load the checkpoints", || {
            self.hydrate_once(dir, initializer)
        })
    }

    fn hydrate_once(&self, dir: &Path, initializer: bool) -> Result<usize, Error> {
        create_working_copy(dir)?;
        let part_start = format!("{}{CKPT_INFIX}", self.stem());
        let parts = self.list_ids(&part_start)?;
        let mut commit = None;
        let mut generation = 0;
        if initializer {
            let commits = self.list_ids(&format!("{}{COMMIT_INFIX}", sanitize(&self.app)))?;
            let generations =
                self.list_ids(&format!("{}{GENERATION_INFIX}", sanitize(&self.app)))?;
            if let Some((id, name)) = commits.last() {
                commit = Some((*id, self.read_marker(name)?));
            }
            if let Some((g, name)) = generations.last() {
                self.read_marker(name)?;
                generation = *g;
            }
            // Older markers say nothing the newest do not.
            for (_, name) in commits
                .iter()
                .rev()
                .skip(1)
                .chain(generations.iter().rev().skip(1))
            {
                self.delete(name, "an older marker")?;
            }
        }
        let keep: BTreeSet<u64> = parts.iter().map(|(id, _)| *id).collect();
        for id in checkpoint_store::list(dir, &self.app, &self.worker)? {
            if !keep.contains(&id) {
                let path = checkpoint_store::checkpoint_path(dir, &self.app, &self.worker, id);
                fs::remove_file(&path).map_err(|source| StoreError::Io {
                    path,
                    action: "remove (a local file the object store does not have)".into(),
                    source,
                })?;
            }
        }
        for (_, name) in &parts {
            let bytes = self.get(name)?;
            write_file(dir, &dir.join(name), &bytes)?;
        }
        if initializer {
            let path = checkpoint_store::membership_path(dir, &self.app, &self.worker);
            let name = Self::name_of(&path);
            if self.exists(&name)? {
                write_file(dir, &path, &self.get(&name)?)?;
            } else {
                remove_if_there(
                    &path,
                    "remove (a membership file the object store does not have)",
                )?;
            }
            CommitLog::remove(dir, &self.app)?;
            if commit.is_some() || generation > 0 {
                let mut log = CommitLog::open_or_create(dir, &self.app)?;
                if let Some((checkpoint, g)) = commit {
                    log.append(CommitRecord::Committed {
                        checkpoint,
                        generation: g,
                    })?;
                }
                if generation > log.state().generation {
                    log.append(CommitRecord::Generation { generation })?;
                }
            }
        }
        Ok(parts.len())
    }

    /// Runs `step` until it succeeds or fails for a reason other than the
    /// store being out of reach.
    fn wait_for_store<T>(
        &self,
        what: &str,
        mut step: impl FnMut() -> Result<T, Error>,
    ) -> Result<T, Error> {
        loop {
            match step() {
                Err(Error::Store { source, object, .. }) if transient(&source) => {
                    // The worker's log lines already name the worker.
                    warn!(
                        "can't {what} from the object store {} yet ({object}: {source}); \
                         waiting for it, retrying every {} s",
                        self.url,
                        WAIT_RETRY.as_secs()
                    );
                    std::thread::sleep(WAIT_RETRY);
                }
                other => return other,
            }
        }
    }

    // ------------------------------------------------------------ checkpoints

    /// Uploads this worker's part of checkpoint `id` from `dir`; the part
    /// counts as written only once this returns `Ok`.
    pub fn upload_part(&self, dir: &Path, id: u64) -> Result<(), Error> {
        let name = self.part_name(id);
        self.upload(dir, &name, id)
    }

    fn upload(&self, dir: &Path, name: &str, id: u64) -> Result<(), Error> {
        let path = dir.join(name);
        let bytes = fs::read(&path).map_err(|source| StoreError::Io {
            path: path.clone(),
            action: "read for upload".into(),
            source,
        })?;
        let put = self.block_on(self.store.put(&self.path(name), PutPayload::from(bytes)));
        let mut stale = self.stale.lock().unwrap_or_else(|p| p.into_inner());
        match put {
            Ok(_) => {
                stale.remove(name);
                Ok(())
            }
            Err(e) => {
                stale.insert(name.to_string());
                Err(self.store_err(name, format!("upload checkpoint {id}'s part"), e))
            }
        }
    }

    /// After checkpoint `id` committed and the working copy was compacted
    /// (`compacted`: file `id` was rewritten) and pruned: uploads what is
    /// stale, then deletes the objects the working copy no longer has and
    /// that are older than `id`.
    pub fn after_commit(&self, dir: &Path, id: u64, compacted: bool) -> Result<(), Error> {
        if compacted {
            self.stale
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(self.part_name(id));
        }
        let stale: Vec<String> = self
            .stale
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let start = format!("{}{CKPT_INFIX}", self.stem());
        for name in stale {
            match parse_id(&name, &start) {
                Some(n) if dir.join(&name).exists() => self.upload(dir, &name, n)?,
                _ => {
                    self.stale
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&name);
                }
            }
        }
        let local: BTreeSet<u64> = checkpoint_store::list(dir, &self.app, &self.worker)?
            .into_iter()
            .collect();
        for (n, name) in self.list_ids(&start)? {
            if n < id && !local.contains(&n) {
                self.delete(&name, "a superseded part")?;
            }
        }
        Ok(())
    }

    /// Rollback to `id` (None: nothing committed): deletes this worker's
    /// part objects of later checkpoints, which never completed.
    pub fn discard_later(&self, id: Option<u64>) -> Result<(), Error> {
        let start = format!("{}{CKPT_INFIX}", self.stem());
        for (n, name) in self.list_ids(&start)? {
            if id.is_none_or(|id| n > id) {
                self.delete(&name, "a checkpoint that never completed")?;
            }
        }
        Ok(())
    }

    /// Clean shutdown, or this worker left its cluster: deletes its part
    /// objects (and, on the initializer, the markers and the membership
    /// file). A left marker stays.
    pub fn remove_all(&self, initializer: bool) -> Result<(), Error> {
        let mut starts = vec![format!("{}{CKPT_INFIX}", self.stem())];
        if initializer {
            starts.push(format!("{}{COMMIT_INFIX}", sanitize(&self.app)));
            starts.push(format!("{}{GENERATION_INFIX}", sanitize(&self.app)));
            starts.push(Self::name_of(&checkpoint_store::membership_path(
                Path::new(""),
                &self.app,
                &self.worker,
            )));
        }
        for start in starts {
            for name in self.list(&start)? {
                self.delete(&name, "clean shutdown")?;
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------ membership

    /// Uploads the initializer's membership file from `dir` after it was
    /// written locally. A membership change must be durable before any
    /// worker hears of it, so this waits (and says so) while the store is
    /// out of reach.
    pub fn upload_membership(&self, dir: &Path) -> Result<(), Error> {
        let path = checkpoint_store::membership_path(dir, &self.app, &self.worker);
        self.upload_required(&path, "record the membership")
    }

    /// Uploads this worker's left marker from `dir` (it left its cluster),
    /// waiting for the store: the marker must be there before the part
    /// objects go, so a restart on any disk finds one or the other.
    pub fn upload_left_marker(&self, dir: &Path) -> Result<(), Error> {
        let path = checkpoint_store::left_path(dir, &self.app, &self.worker);
        self.upload_required(&path, "record that this worker left")
    }

    /// Has this worker a left marker in the store (it left its cluster in
    /// an earlier run, perhaps on another disk)? If so it is copied into
    /// `dir`. Waits while the store is out of reach.
    pub fn left_marker(&self, dir: &Path) -> Result<bool, Error> {
        let path = checkpoint_store::left_path(dir, &self.app, &self.worker);
        let name = Self::name_of(&path);
        // Part of loading the checkpoints at start-up, and said so.
        self.wait_for_store("load the checkpoints", || {
            if !self.exists(&name)? {
                return Ok(false);
            }
            create_working_copy(dir)?;
            write_file(dir, &path, &self.get(&name)?)?;
            Ok(true)
        })
    }

    /// The object URL of this worker's left marker.
    pub fn left_marker_url(&self) -> String {
        self.object_url(&Self::name_of(&checkpoint_store::left_path(
            Path::new(""),
            &self.app,
            &self.worker,
        )))
    }

    /// Uploads the local file `path` as the object of the same name,
    /// waiting while the store is out of reach.
    fn upload_required(&self, path: &Path, what: &str) -> Result<(), Error> {
        let name = Self::name_of(path);
        let bytes = Bytes::from(fs::read(path).map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            action: "read for upload".into(),
            source,
        })?);
        self.wait_for_store(what, || {
            self.block_on(
                self.store
                    .put(&self.path(&name), PutPayload::from(bytes.clone())),
            )
            .map(|_| ())
            .map_err(|e| self.store_err(&name, format!("upload ({what})"), e))
        })
    }

    // ------------------------------------------------------------ markers

    /// Marks checkpoint `id` (of `generation`) complete, create-only; then
    /// deletes the marker of `previous`, the commit it supersedes.
    pub fn record_commit(
        &self,
        id: u64,
        generation: u64,
        previous: Option<u64>,
    ) -> Result<(), Error> {
        let name = self.marker_name(COMMIT_INFIX, id);
        self.create_marker(&name, generation, &format!("checkpoint {id} as complete"))?;
        if let Some(previous) = previous {
            let old = self.marker_name(COMMIT_INFIX, previous);
            if let Err(e) = self.delete(&old, "a superseded commit marker") {
                warn!("{e}");
            }
        }
        Ok(())
    }

    /// Claims `generation`, create-only, waiting while the store is out of
    /// reach (a rollback can't go on without it).
    pub fn record_generation(&self, generation: u64) -> Result<(), Error> {
        let name = self.marker_name(GENERATION_INFIX, generation);
        let what = format!("generation {generation}");
        self.wait_for_store("record the new generation", || {
            self.create_marker(&name, generation, &what)
        })?;
        if let Some(previous) = generation.checked_sub(1).filter(|g| *g > 0) {
            let old = self.marker_name(GENERATION_INFIX, previous);
            if let Err(e) = self.delete(&old, "a superseded generation marker") {
                warn!("{e}");
            }
        }
        Ok(())
    }

    fn create_marker(&self, name: &str, value: u64, what: &str) -> Result<(), Error> {
        let mut body = Vec::with_capacity(MARKER_LEN);
        body.extend_from_slice(&value.to_le_bytes());
        body.extend_from_slice(&self.nonce);
        let crc = crc32(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        let opts = PutOptions::from(PutMode::Create);
        let body = Bytes::from(body);
        let put = self.block_on(self.store.put_opts(
            &self.path(name),
            PutPayload::from(body.clone()),
            opts,
        ));
        match put {
            Ok(_) => Ok(()),
            // Ours, if an earlier attempt got through unanswered.
            Err(object_store::Error::AlreadyExists { .. }) if self.get(name)? == body => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(Error::Claimed {
                worker: self.worker.clone(),
                object: self.object_url(name),
                what: what.to_string(),
            }),
            Err(e) => Err(self.store_err(name, format!("record {what}"), e)),
        }
    }

    /// The generation a marker holds, checked.
    fn read_marker(&self, name: &str) -> Result<u64, Error> {
        let body = self.get(name)?;
        let corrupt = |problem: String| Error::Corrupt {
            worker: self.worker.clone(),
            object: self.object_url(name),
            problem,
        };
        if body.len() != MARKER_LEN {
            return Err(corrupt(format!(
                "{} bytes, a marker has {MARKER_LEN}",
                body.len()
            )));
        }
        let (data, crc) = body.split_at(MARKER_LEN - 4);
        let mut stored = [0u8; 4];
        stored.copy_from_slice(crc);
        if crc32(data) != u32::from_le_bytes(stored) {
            return Err(corrupt("checksum mismatch".into()));
        }
        let mut value = [0u8; 8];
        value.copy_from_slice(&data[..8]);
        Ok(u64::from_le_bytes(value))
    }
}

/// Could the request succeed later (the store down, slow or overloaded)?
fn transient(e: &object_store::Error) -> bool {
    !matches!(
        e,
        object_store::Error::NotFound { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotSupported { .. }
            | object_store::Error::NotImplemented { .. }
            | object_store::Error::InvalidPath { .. }
            | object_store::Error::UnknownConfigurationKey { .. }
    )
}

fn crc32(data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(data);
    h.finalize()
}

/// The id in `<start><20 digits>`, if `name` is exactly that.
fn parse_id(name: &str, start: &str) -> Option<u64> {
    let digits = name.strip_prefix(start)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// Creates the local working copy `dir` if it is missing.
fn create_working_copy(dir: &Path) -> Result<(), StoreError> {
    fs::create_dir_all(dir).map_err(|e| StoreError::Io {
        path: dir.to_path_buf(),
        action: "create the local working copy of the object store".into(),
        source: e,
    })
}

/// Removes `path` if it exists.
fn remove_if_there(path: &Path, action: &str) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::Io {
            path: path.to_path_buf(),
            action: action.into(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Writes a downloaded object crash-safely: `*.tmp`, fsync, rename.
fn write_file(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let io = |path: &Path, action: &str, source| StoreError::Io {
        path: path.to_path_buf(),
        action: action.into(),
        source,
    };
    File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .map_err(|e| io(&tmp, "write a downloaded object", e))?;
    fs::rename(&tmp, path).map_err(|e| io(path, "rename the downloaded object to it", e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, "fsync the working copy", e))
}

#[cfg(test)]
mod tests;
