//! `paystream serve`: bind the address, open the log, catch the facts up from
//! their checkpoint, make sure an admin key exists, finish payments left
//! pending, serve HTTP until SIGINT/SIGTERM, then drain, checkpoint and close.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use paystream_commands::bus::CommandBus;
use paystream_commands::facts::{Facts, FactsBudget, FactsFollower};
use paystream_commands::services::{hash_key, Services};
use paystream_commands::{RequestMeta, SandboxAcquirer};
use paystream_domain::api_key::Role;
use paystream_domain::Context;
use paystream_projections::{Projections, ProjectorConfig};
use paystream_store::{EmbeddedOptions, EmbeddedStore, EventStore, StoreError};
use uuid::Uuid;

use crate::app::app;
use crate::metrics;
use crate::state::AppState;

/// How often lapsed authorizations are looked for.
pub const EXPIRY_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Most authorizations expired per sweep.
pub const EXPIRY_SWEEP_BATCH: usize = 1_000;
/// How often payments still awaiting the acquirer are looked for (more often
/// when `--pending-after-seconds` is shorter).
pub const PENDING_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Most pending payments finished per sweep.
pub const PENDING_SWEEP_BATCH: usize = 1_000;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub data: PathBuf,
    /// `HOST:PORT`: an IP address or a host name (`localhost:8080`); see [`bind`].
    pub listen: String,
    pub tuning: Tuning,
}

/// The memory budget and retention windows of a server: each a `serve`
/// option, each default a named constant of the crate that owns the part
/// (docs/ARCHITECTURE.md, "Memory budget").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// `--store-cache-mib`: the event log's index caches and its sled cache.
    pub store_cache_mib: u64,
    /// `--facts-cache-mib`: the write side's facts (velocity, volumes, pending).
    pub facts_cache_mib: u64,
    /// `--projections-cache-mib`: the read models' working sets and sled cache.
    pub projections_cache_mib: u64,
    /// `--idempotency-window-seconds`: how long an `Idempotency-Key` is remembered.
    pub idempotency_window: Duration,
    /// `--pending-after-seconds`: how long a payment may wait for the acquirer's
    /// answer before the recovery sweep asks the acquirer for it.
    pub pending_after: Duration,
}

/// Defaults of [`Tuning`].
pub const DEFAULT_STORE_CACHE_MIB: u64 = paystream_store::DEFAULT_INDEX_CACHE_BYTES / MIB;
pub const DEFAULT_FACTS_CACHE_MIB: u64 = paystream_commands::facts::DEFAULT_FACTS_CACHE_MIB;
pub const DEFAULT_PROJECTIONS_CACHE_MIB: u64 = paystream_projections::DEFAULT_CACHE_MIB;
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = paystream_store::DEFAULT_IDEMPOTENCY_WINDOW;
/// Bytes in a mebibyte.
pub const MIB: u64 = 1024 * 1024;
pub const DEFAULT_PENDING_AFTER: Duration = paystream_commands::services::DEFAULT_PENDING_AFTER;

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            store_cache_mib: DEFAULT_STORE_CACHE_MIB,
            facts_cache_mib: DEFAULT_FACTS_CACHE_MIB,
            projections_cache_mib: DEFAULT_PROJECTIONS_CACHE_MIB,
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
            pending_after: DEFAULT_PENDING_AFTER,
        }
    }
}

/// Everything that can stop the server from starting.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Shortest card fingerprint key accepted, in bytes: a shorter (or empty) HMAC
/// key lets anyone who guesses it brute-force a card number from its first six
/// and last four digits and its fingerprint.
pub const MIN_FINGERPRINT_KEY_BYTES: usize = 32;

/// The card fingerprint key: PAYSTREAM_FINGERPRINT_KEY (hex), else the key
/// file in the data directory, created on first start (0600 in a 0700
/// `secrets` directory). Shorter than [`MIN_FINGERPRINT_KEY_BYTES`] is refused.
fn fingerprint_key(data: &Path) -> Result<Vec<u8>, BoxError> {
    if let Ok(hex_key) = std::env::var("PAYSTREAM_FINGERPRINT_KEY") {
        let key = hex::decode(hex_key.trim()).map_err(|e| format!("PAYSTREAM_FINGERPRINT_KEY is not hex: {e}"))?;
        return long_enough(key, "PAYSTREAM_FINGERPRINT_KEY");
    }
    let dir = data.join("secrets");
    let path = dir.join("fingerprint.key");
    private_dir(&dir)?;
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            // Files written by older servers were 0644.
            set_mode(&path, 0o600)?;
            let key = hex::decode(text.trim()).map_err(|e| format!("{} is not hex: {e}", path.display()))?;
            long_enough(key, &path.display().to_string())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let key = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
            let tmp = dir.join("fingerprint.key.tmp");
            {
                use std::io::Write;
                let mut file = private_file(&tmp)?;
                file.write_all(key.as_bytes())?;
                file.sync_all()?;
            }
            // A leftover temporary file keeps its old mode through `private_file`.
            set_mode(&tmp, 0o600)?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&dir)?.sync_all()?;
            Ok(hex::decode(key)?)
        }
        Err(error) => Err(error.into()),
    }
}

fn long_enough(key: Vec<u8>, source: &str) -> Result<Vec<u8>, BoxError> {
    if key.len() < MIN_FINGERPRINT_KEY_BYTES {
        return Err(format!(
            "{source}: the card fingerprint key has {} bytes; it needs at least {MIN_FINGERPRINT_KEY_BYTES} \
             ({} hex digits), e.g. from `openssl rand -hex {MIN_FINGERPRINT_KEY_BYTES}`",
            key.len(),
            2 * MIN_FINGERPRINT_KEY_BYTES
        )
        .into());
    }
    Ok(key)
}

/// Creates `dir` (and its parents) if needed and makes it readable by its owner only.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    set_mode(dir, 0o700)
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

/// Creates (or truncates) a file only its owner can read or write.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// The platform opened on a data directory: the log, the write side (facts
/// caught up) and the read side (not yet started).
pub struct Opened {
    pub services: Arc<Services>,
    pub store: Arc<dyn EventStore>,
    pub projections: Projections,
    /// Keeps the facts current; `stop` writes their last checkpoint.
    pub facts_follower: FactsFollower,
}

/// Opens the read side's database (`<data>/projections`) over `store`, within the
/// default memory budget ([`DEFAULT_PROJECTIONS_CACHE_MIB`]): `replay` and `export`.
pub async fn open_projections(data: &Path, store: Arc<dyn EventStore>) -> Result<Projections, BoxError> {
    open_projections_within(data, store, DEFAULT_PROJECTIONS_CACHE_MIB).await
}

/// Opens the read side's database (`<data>/projections`) over `store`, within a
/// memory budget of `cache_mib` MiB (`--projections-cache-mib`): sled's page cache and
/// the read models' working sets (docs/ARCHITECTURE.md, "The read side").
pub async fn open_projections_within(
    data: &Path,
    store: Arc<dyn EventStore>,
    cache_mib: u64,
) -> Result<Projections, BoxError> {
    let dir = data.join("projections");
    let config = ProjectorConfig {
        cache_bytes: cache_mib.saturating_mul(paystream_projections::MIB),
        ..ProjectorConfig::default()
    };
    let projections = tokio::task::spawn_blocking(move || {
        let db = paystream_projections::open_db(&dir, &config)?;
        Projections::open(db, store, config)
    })
    .await??;
    Ok(projections)
}

/// Opens the log and builds the write side, with the facts caught up, and
/// the read side.
pub async fn open(data: &Path, tuning: &Tuning) -> Result<Opened, BoxError> {
    if !data.exists() {
        // A new data directory is the owner's only; an existing one keeps its mode.
        private_dir(data)?;
    }
    let store_dir = data.to_path_buf();
    let store_options = EmbeddedOptions {
        cache_bytes: tuning.store_cache_mib.saturating_mul(MIB),
        idempotency_window: tuning.idempotency_window,
        ..EmbeddedOptions::default()
    };
    let started = std::time::Instant::now();
    let store: Arc<dyn EventStore> =
        Arc::new(tokio::task::spawn_blocking(move || EmbeddedStore::open_with(&store_dir, store_options)).await??);
    let store_ms = started.elapsed().as_millis() as u64;
    let context = Context::new(fingerprint_key(data)?);
    // The facts and the read side open their databases at the same time.
    let projections = tokio::spawn({
        let (data, store, cache_mib) = (data.to_path_buf(), Arc::clone(&store), tuning.projections_cache_mib);
        async move {
            let projections = open_projections_within(&data, store, cache_mib).await;
            (projections, started.elapsed().as_millis() as u64)
        }
    });
    let budget = FactsBudget::from_mib(tuning.facts_cache_mib);
    let facts = Arc::new(Facts::open(&data.join("facts"), budget, store.as_ref()).await?);
    let head = store.head().await?;
    let mut facts_follower = facts.start(Arc::clone(&store));
    facts_follower.wait_for(&facts, head).await?;
    let facts_ms = started.elapsed().as_millis() as u64;
    let bus = Arc::new(CommandBus::new(Arc::clone(&store), context));
    let services = Arc::new(Services::new(bus, facts, Arc::new(SandboxAcquirer::default())));
    let (projections, projections_ms) = projections.await?;
    let projections = projections?;
    tracing::info!(
        head,
        store_ms,
        facts_ms,
        projections_ms,
        "opened: the log and its index, the facts, the read side (ms since start)"
    );
    Ok(Opened { services, store, projections, facts_follower })
}

/// Makes sure an admin key exists: PAYSTREAM_ADMIN_KEY if set, else a new
/// one printed once on first start.
pub async fn bootstrap_admin(services: &Services) -> Result<(), BoxError> {
    let meta = RequestMeta::new(Uuid::now_v7(), None);
    match std::env::var("PAYSTREAM_ADMIN_KEY") {
        Ok(secret) if !secret.trim().is_empty() && services.facts.key_by_hash(&hash_key(secret.trim())).is_none() => {
            services.issue_key_with_secret(&meta, Role::Admin, None, secret.trim().to_string()).await?;
            tracing::info!("admin key from PAYSTREAM_ADMIN_KEY registered");
        }
        Ok(secret) if !secret.trim().is_empty() => {}
        _ if services.facts.key_count() == 0 => {
            let (_, secret) = services.issue_key(&meta, Role::Admin, None).await?;
            // Shown once, on stdout, never in a log line.
            println!("First start: your admin API key (shown once, store it now):\n\n    {secret}\n");
        }
        _ => {}
    }
    Ok(())
}

/// SIGTERM or Ctrl-C (SIGINT). The handlers are installed when this is called, not
/// when the future is first polled: a signal that arrives right after `listening on`
/// is printed still gets a clean stop instead of the default action (death).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let (terminate, interrupt) = {
        use tokio::signal::unix::{signal, SignalKind};
        (signal(SignalKind::terminate()).ok(), signal(SignalKind::interrupt()).ok())
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |stream: Option<tokio::signal::unix::Signal>| async move {
                match stream {
                    Some(mut stream) => {
                        stream.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(terminate) => {},
                () = wait(interrupt) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutdown signal received: finishing in-flight requests");
    }
}

/// Finishes payments left awaiting the acquirer's answer for longer than
/// `pending_after`: at start (the facts have caught up by then), then every
/// [`PENDING_SWEEP_INTERVAL`] or `pending_after`, whichever is shorter.
async fn sweep_pending(services: Arc<Services>, pending_after: Duration) {
    let mut interval = tokio::time::interval(PENDING_SWEEP_INTERVAL.min(pending_after).max(Duration::from_secs(1)));
    loop {
        interval.tick().await;
        let meta = RequestMeta::new(Uuid::now_v7(), None);
        match services.recover_pending(&meta, pending_after, PENDING_SWEEP_BATCH).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(finished = n, "pending payments finished with the acquirer's answer"),
            Err(error) => tracing::warn!(%error, "pending sweep failed"),
        }
    }
}

/// Binds `listen` (`HOST:PORT`, an IP address or a host name such as
/// `localhost:8080`). A name's IPv4 addresses are tried first (so `localhost`
/// listens where clients of `127.0.0.1` connect), then its others, one at a
/// time until one binds; an address in use or forbidden stops there (the server
/// never moves to another address than the one asked for). The error names the
/// address and says what to do.
pub async fn bind(listen: &str) -> Result<tokio::net::TcpListener, BoxError> {
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host(listen)
        .await
        .map_err(|error| {
            format!(
                "cannot listen on {listen}: cannot resolve it: {error} (give HOST:PORT, e.g. 127.0.0.1:8080 or \
                 localhost:8080, with --listen)"
            )
        })?
        .collect();
    addrs.sort_by_key(|addr| !addr.is_ipv4());
    let mut failure = None;
    for addr in addrs {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(error) => {
                // Someone has this address, or it is forbidden: said as it is, and no other
                // address is tried.
                let last = matches!(error.kind(), std::io::ErrorKind::AddrInUse | std::io::ErrorKind::PermissionDenied);
                if last || failure.is_none() {
                    failure = Some((addr, error));
                }
                if last {
                    break;
                }
            }
        }
    }
    let Some((addr, error)) = failure else {
        return Err(
            format!("cannot listen on {listen}: the name resolves to no address (give another with --listen)").into()
        );
    };
    let shown = if addr.to_string() == listen { listen.to_string() } else { format!("{listen} ({addr})") };
    let said = match error.kind() {
        std::io::ErrorKind::AddrInUse => {
            "address already in use (is another paystream running? choose another with --listen)".to_string()
        }
        std::io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need privileges; choose another with --listen)".to_string()
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "address not available (not an address of this machine; choose another with --listen)".to_string()
        }
        _ => format!("{error} (choose another address with --listen)"),
    };
    Err(format!("cannot listen on {shown}: {said}").into())
}

pub async fn serve(options: ServeOptions) -> Result<(), BoxError> {
    // The port first: a busy one fails before the data directory is created or
    // opened, and before a first-start admin key is made (and shown once).
    let listener = bind(&options.listen).await?;
    let local = listener.local_addr()?;
    // Before the log opens: the store takes its metric handles from the recorder then.
    let metrics_handle = metrics::install()?;
    let Opened { services, store, projections, facts_follower } = open(&options.data, &options.tuning).await?;
    bootstrap_admin(&services).await?;
    let read_side = projections.start();
    let pending_sweeper = tokio::spawn(sweep_pending(Arc::clone(&services), options.tuning.pending_after));
    let sweeper = tokio::spawn({
        let services = Arc::clone(&services);
        async move {
            let mut interval = tokio::time::interval(EXPIRY_SWEEP_INTERVAL);
            loop {
                interval.tick().await;
                let meta = RequestMeta::new(Uuid::now_v7(), None);
                match services.expire_due(&meta, EXPIRY_SWEEP_BATCH).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(expired = n, "authorizations expired"),
                    Err(error) => tracing::warn!(%error, "expiry sweep failed"),
                }
            }
        }
    });
    let tuning = &options.tuning;
    // The address is on stdout alone (the line below), not repeated here.
    tracing::info!(
        data = %options.data.display(),
        store_cache_mib = tuning.store_cache_mib,
        facts_cache_mib = tuning.facts_cache_mib,
        projections_cache_mib = tuning.projections_cache_mib,
        idempotency_window_seconds = tuning.idempotency_window.as_secs(),
        pending_after_seconds = tuning.pending_after.as_secs(),
        "paystream started"
    );
    let shutdown = shutdown_signal();
    // A line tests and scripts can wait for.
    println!("listening on http://{local}");
    // The routers hold the only clones of the state: gone once serving ends, before the
    // derived databases are snapshotted.
    let state = AppState { services: Arc::clone(&services), projections: projections.clone() };
    let scrape = metrics::router(metrics_handle.clone(), &state);
    let router = app(state).merge(scrape);
    let upkeep = metrics::spawn_upkeep(metrics_handle);
    // Counts open connections; tapped for axum's ConnectInfo<SocketAddr> (the client's
    // address in request log lines).
    let listener = metrics::CountingListener::new(listener).tap_io(|_| {});
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await?;
    upkeep.abort();
    sweeper.abort();
    pending_sweeper.abort();
    read_side.stop().await;
    projections.flush().await?;
    facts_follower.stop().await?;
    match store.close().await {
        Ok(()) | Err(StoreError::Closed) => {}
        Err(error) => return Err(error.into()),
    }
    // Every handle of the derived databases goes before they are snapshotted.
    let _ = sweeper.await;
    let _ = pending_sweeper.await;
    drop((services, projections, store));
    snapshot_derived(&options.data).await;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// After a clean stop, lets sled write a snapshot of each derived database
/// ([`paystream_store::snapshot_derived_db`]), so the next start does not replay what
/// this run wrote. A failure costs only that replay: it is logged, not returned.
async fn snapshot_derived(data: &Path) {
    let started = std::time::Instant::now();
    let databases = [
        (data.join(paystream_store::INDEX_DIR), "the log's index"),
        (data.join("facts"), "facts database"),
        (data.join("projections"), "projections database"),
    ];
    let outcome = tokio::task::spawn_blocking(move || {
        for (path, what) in databases {
            if let Err(error) = paystream_store::snapshot_derived_db(&path, what) {
                tracing::warn!(%error, path = %path.display(), "{what}: no snapshot at stop; the next start replays it");
            }
        }
    })
    .await;
    if let Err(error) = outcome {
        tracing::warn!(%error, "snapshotting the derived databases at stop failed");
    }
    tracing::info!(ms = started.elapsed().as_millis(), "derived databases snapshotted for a quick next start");
}
