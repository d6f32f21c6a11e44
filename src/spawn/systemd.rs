//! The systemd backend: every worker is its own transient service unit, started over D-Bus.
//!
//! `systemctl`, the journal and cgroup accounting then know each worker by name
//! (`baton-<app>-w<id>.service`, in `baton-<app>.slice`). Job results come from `JobRemoved`
//! (subscribed before any job is queued, so none is missed) and unit state from
//! `PropertiesChanged`, never from polling. Workers stop through `StopUnit`.
//!
//! When baton itself runs as a service, worker units carry `StopPropagatedFrom=` and `Before=`
//! that service: `systemctl stop` stops baton first (it drains its clients) and then the workers,
//! while `systemctl restart` leaves them running for the next baton to adopt.

use super::{
    Adopted, ExitReason, OutputTail, SpawnError, Spawner, StartedWorker, Usage, WorkerId,
    WorkerSpec,
};
use crate::config::{AppName, Config, find_program};
use async_trait::async_trait;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use zbus::fdo::PropertiesProxy;
use zbus::{Connection, OwnedObjectPath, OwnedVariant, Variant};
use zbus_systemd::systemd1::{ManagerProxy, ServiceProxy, UnitProxy};

const DESTINATION: &str = "org.freedesktop.systemd1";

/// Why the systemd backend could not be set up: which step, and the bus's own error.
#[derive(Debug, thiserror::Error)]
#[error("systemd backend: {what}: {source}")]
pub struct ConnectError {
    what: &'static str,
    #[source]
    source: zbus::Error,
}

#[derive(Default)]
struct Jobs {
    /// Jobs someone waits for, by object path.
    waiting: HashMap<String, oneshot::Sender<String>>,
    /// Results that arrived before anyone asked (the job can end before StartTransientUnit
    /// returns its path to us).
    finished: HashMap<String, String>,
}

/// Unit settings from `[spawner]` that every worker unit gets.
#[derive(Clone, Debug, Default)]
struct UnitSettings {
    memory_max: Option<u64>,
    cpu_quota_percent: Option<u32>,
    no_new_privileges: Option<bool>,
    protect_system: Option<&'static str>,
    stop_timeout: Duration,
}

pub struct SystemdSpawner {
    conn: Connection,
    manager: ManagerProxy<'static>,
    app: AppName,
    settings: UnitSettings,
    jobs: Arc<Mutex<Jobs>>,
    /// The service baton runs as, if any.
    own_unit: Option<String>,
}

fn bus_err(what: &'static str) -> impl Fn(zbus::Error) -> ConnectError {
    move |source| ConnectError { what, source }
}

impl SystemdSpawner {
    /// Connect to the system bus (as root) or the session bus (a user manager).
    pub async fn connect(config: &Config) -> Result<SystemdSpawner, ConnectError> {
        let conn = if nix::unistd::geteuid().is_root() {
            Connection::system().await
        } else {
            Connection::session().await
        }
        .map_err(bus_err("cannot connect to the bus"))?;
        let manager = ManagerProxy::new(&conn)
            .await
            .map_err(bus_err("cannot reach systemd"))?;
        // Listen for JobRemoved before any job is queued, so that no result is missed.
        let mut removed = manager
            .receive_job_removed()
            .await
            .map_err(bus_err("cannot listen for JobRemoved"))?;
        manager
            .subscribe()
            .await
            .map_err(bus_err("Subscribe() failed"))?;
        let jobs = Arc::new(Mutex::new(Jobs::default()));
        let j = jobs.clone();
        tokio::spawn(async move {
            while let Some(signal) = removed.next().await {
                let Ok(args) = signal.args() else { continue };
                let path = args.job().to_string();
                let result = args.result().to_string();
                let mut jobs = j.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(tx) = jobs.waiting.remove(&path) {
                    let _ = tx.send(result);
                } else {
                    // Subscribe() reports every job on the system; keep the memory bounded.
                    if jobs.finished.len() > 4096 {
                        jobs.finished.clear();
                    }
                    jobs.finished.insert(path, result);
                }
            }
        });
        let own_unit = own_service(&conn, &manager).await;
        let s = &config.spawner;
        Ok(SystemdSpawner {
            conn,
            manager,
            app: config.name.clone(),
            settings: UnitSettings {
                memory_max: s.memory_max.map(|b| b.0).filter(|b| *b > 0),
                cpu_quota_percent: s.cpu_quota.map(|q| q.percent),
                no_new_privileges: s.no_new_privileges,
                protect_system: s.protect_system.map(|p| p.as_str()),
                stop_timeout: config.restart.stop_timeout.get(),
            },
            jobs,
            own_unit,
        })
    }

    pub fn unit_name(&self, id: WorkerId) -> String {
        format!("baton-{}-w{}.service", self.app, id)
    }

    async fn wait_job(&self, job: &OwnedObjectPath, limit: Duration) -> Option<String> {
        let rx = {
            let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(result) = jobs.finished.remove(job.as_str()) {
                return Some(result);
            }
            let (tx, rx) = oneshot::channel();
            jobs.waiting.insert(job.to_string(), tx);
            rx
        };
        let result = tokio::time::timeout(limit, rx).await.ok()?.ok();
        if result.is_none() {
            let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
            jobs.waiting.remove(job.as_str());
        }
        result
    }

    async fn properties(&self, path: &OwnedObjectPath) -> zbus::Result<PropertiesProxy<'static>> {
        PropertiesProxy::builder(&self.conn)
            .destination(DESTINATION)
            .path(path.clone())
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
    }

    async fn service(&self, path: &OwnedObjectPath) -> zbus::Result<ServiceProxy<'static>> {
        ServiceProxy::builder(&self.conn)
            .path(path.clone())
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
    }

    /// Follow a unit until it is gone; the watch turns `Some` then. `running` says whether the
    /// unit was already running when `changes` was set up (adoption): otherwise the stream also
    /// holds the signals of the unit's creation, whose "inactive" is not an end.
    fn follow(
        &self,
        unit: String,
        path: OwnedObjectPath,
        mut changes: zbus::fdo::PropertiesChangedStream,
        pid: Option<u32>,
        running: bool,
    ) -> StartedWorker {
        let (tx, rx) = watch::channel(None);
        let output = OutputTail::default();
        let tail = output.clone();
        let conn = self.conn.clone();
        let name = unit.clone();
        tokio::spawn(async move {
            let mut last = UnitEnd {
                started: running,
                ..UnitEnd::default()
            };
            // It may have ended between its start job and now: look once before waiting.
            let unit_proxy = UnitProxy::builder(&conn)
                .path(path.clone())
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await;
            let now = match unit_proxy {
                Ok(p) => p.active_state().await.unwrap_or_else(|_| "inactive".into()),
                // Collected already: it is gone.
                Err(_) => "inactive".into(),
            };
            let mut over = matches!(now.as_str(), "inactive" | "failed");
            if over {
                last.active_state = Some(now);
            }
            while !over {
                let Some(signal) = changes.next().await else {
                    break;
                };
                let Ok(args) = signal.args() else { continue };
                for (name, value) in args.changed_properties() {
                    last.update(name, value);
                }
                over = last.is_over();
            }
            for line in journal_tail(&name).await {
                tail.push(line);
            }
            let _ = tx.send(Some(last.reason(&name)));
        });
        StartedWorker {
            pid,
            unit: Some(unit),
            exited: rx,
            output,
        }
    }
}

/// What is known about how a unit ended, from its PropertiesChanged signals.
#[derive(Default, Debug)]
struct UnitEnd {
    /// Seen activating or running: from then on, "inactive" means it ended.
    started: bool,
    active_state: Option<String>,
    result: Option<String>,
    exec_main_code: Option<i32>,
    exec_main_status: Option<i32>,
}

impl UnitEnd {
    fn update(&mut self, name: &str, value: &Variant<'_>) {
        match name {
            "ActiveState" => {
                self.active_state = String::try_from(value.clone()).ok();
                if matches!(
                    self.active_state.as_deref(),
                    Some("activating" | "active" | "deactivating" | "reloading")
                ) {
                    self.started = true;
                }
            }
            "Result" => self.result = String::try_from(value.clone()).ok(),
            "ExecMainCode" => self.exec_main_code = i32::try_from(value.clone()).ok(),
            "ExecMainStatus" => self.exec_main_status = i32::try_from(value.clone()).ok(),
            _ => {}
        }
    }

    fn is_over(&self) -> bool {
        self.started && matches!(self.active_state.as_deref(), Some("inactive" | "failed"))
    }

    fn reason(&self, unit: &str) -> ExitReason {
        // siginfo codes: CLD_EXITED = 1, CLD_KILLED = 2, CLD_DUMPED = 3.
        match (self.exec_main_code, self.exec_main_status) {
            (Some(1), Some(status)) => ExitReason::Exited(status),
            (Some(2 | 3), Some(signal)) => ExitReason::Signaled(signal),
            _ => ExitReason::Failed(format!(
                "unit {unit} ended ({}, Result={})",
                self.active_state.as_deref().unwrap_or("inactive"),
                self.result.as_deref().unwrap_or("unknown")
            )),
        }
    }
}

/// The D-Bus object path of a unit (sd_bus_path_encode of its name).
pub fn unit_path(unit: &str) -> String {
    let mut p = String::from("/org/freedesktop/systemd1/unit/");
    for (i, b) in unit.bytes().enumerate() {
        if b.is_ascii_alphanumeric() && !(i == 0 && b.is_ascii_digit()) {
            p.push(b as char);
        } else {
            p.push_str(&format!("_{b:02x}"));
        }
    }
    p
}

/// The last lines the unit wrote, from the journal, for spawn-failure reports.
async fn journal_tail(unit: &str) -> Vec<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::process::Command::new("journalctl")
            .args(["--no-pager", "-o", "cat", "-n", "10", "-u", unit])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await;
    match out {
        Ok(Ok(o)) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// The service this process runs in, when it is one.
async fn own_service(conn: &Connection, manager: &ManagerProxy<'static>) -> Option<String> {
    let path = manager.get_unit_by_pid(std::process::id()).await.ok()?;
    let unit = UnitProxy::builder(conn).path(path).build().await.ok()?;
    let id = unit.id().await.ok()?;
    id.ends_with(".service").then_some(id)
}

fn prop<'a, T>(name: &str, value: T) -> Result<(String, OwnedVariant), String>
where
    T: Into<Variant<'a>>,
{
    OwnedVariant::try_from(value.into())
        .map(|v| (name.to_owned(), v))
        .map_err(|e| format!("cannot encode {name}: {e}"))
}

impl SystemdSpawner {
    fn unit_properties(
        &self,
        spec: &WorkerSpec,
        program: &Path,
    ) -> Result<Vec<(String, OwnedVariant)>, String> {
        let s = &self.settings;
        let mut env: Vec<String> = spec
            .environment
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.push(format!("BATON_APP={}", self.app));
        env.push(format!("BATON_WORKER={}", spec.id));
        env.push(format!("BATON_GENERATION={}", spec.generation));
        let exec = vec![(program.display().to_string(), spec.argv.clone(), false)];
        let mut props = vec![
            prop(
                "Description",
                format!(
                    "baton worker {} of {} (generation {})",
                    spec.id, self.app, spec.generation
                ),
            )?,
            prop("Type", "exec")?,
            prop("ExecStart", exec)?,
            prop("Environment", env)?,
            prop("Slice", format!("baton-{}.slice", self.app))?,
            prop("KillMode", "control-group")?,
            prop("TimeoutStopUSec", s.stop_timeout.as_micros() as u64)?,
            prop("CollectMode", "inactive-or-failed")?,
            prop("MemoryAccounting", true)?,
            prop("CPUAccounting", true)?,
        ];
        if let Some(dir) = &spec.directory {
            props.push(prop("WorkingDirectory", dir.display().to_string())?);
        }
        if let Some(user) = &spec.user {
            props.push(prop("User", user.as_str())?);
        }
        if let Some(group) = &spec.group {
            props.push(prop("Group", group.as_str())?);
        }
        if let Some(max) = s.memory_max {
            props.push(prop("MemoryMax", max)?);
        }
        if let Some(pct) = s.cpu_quota_percent {
            // CPUQuota=150% is 1.5 s of CPU per second.
            props.push(prop("CPUQuotaPerSecUSec", u64::from(pct) * 10_000)?);
        }
        if let Some(nnp) = s.no_new_privileges {
            props.push(prop("NoNewPrivileges", nnp)?);
        }
        if let Some(ps) = s.protect_system {
            props.push(prop("ProtectSystem", ps)?);
        }
        if let Some(weight) = spec.boot_cpu.cpu_weight() {
            // Raised to the default (100) by `booted`, so systemd's accounting shows it.
            props.push(prop("CPUWeight", weight)?);
        }
        if let Some(own) = &self.own_unit {
            props.push(prop("StopPropagatedFrom", vec![own.clone()])?);
            props.push(prop("Before", vec![own.clone()])?);
        }
        Ok(props)
    }
}

#[async_trait]
impl Spawner for SystemdSpawner {
    fn name(&self) -> &'static str {
        "systemd"
    }

    async fn start(&self, spec: &WorkerSpec) -> Result<StartedWorker, SpawnError> {
        let unit = self.unit_name(spec.id);
        let fail = |message: String| SpawnError::Backend {
            worker: spec.id,
            message: format!("unit {unit}: {message}"),
        };
        let program = spec.argv.first().map(String::as_str).unwrap_or_default();
        // systemd wants an absolute path in ExecStart.
        let program = find_program(
            program,
            spec.directory.as_deref(),
            spec.environment.get("PATH").map(String::as_str),
        )
        .map_err(|e| fail(e.to_string()))?;
        let props = self.unit_properties(spec, &program).map_err(&fail)?;
        let path = OwnedObjectPath::try_from(unit_path(&unit))
            .map_err(|e| fail(format!("bad object path: {e}")))?;
        // Watch the unit before it exists, so that not even a very short life goes unseen.
        let changes = self
            .properties(&path)
            .await
            .map_err(|e| fail(e.to_string()))?
            .receive_properties_changed()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let job = self
            .manager
            .start_transient_unit(unit.clone(), "fail".into(), props, Vec::new())
            .await
            .map_err(|e| fail(format!("StartTransientUnit failed: {e}")))?;
        let result = self
            .wait_job(&job, Duration::from_secs(90))
            .await
            .unwrap_or_else(|| "timeout".into());
        let pid = match self.service(&path).await {
            Ok(s) => s.main_pid().await.ok().filter(|p| *p > 0),
            Err(_) => None,
        };
        let worker = self.follow(unit.clone(), path, changes, pid, false);
        if result != "done" {
            // The follower reports how it ended (Type=exec fails the job when exec fails).
            let reason = tokio::time::timeout(Duration::from_secs(5), worker.wait_exit())
                .await
                .map(|r| r.to_string())
                .unwrap_or_else(|_| "did not start".into());
            return Err(fail(format!("start job {result}: {reason}")));
        }
        Ok(worker)
    }

    async fn stop(&self, id: WorkerId, worker: &StartedWorker, timeout: Duration) {
        let Some(unit) = worker.unit.clone() else {
            return;
        };
        if worker.exit_reason().is_some() {
            return;
        }
        match self.manager.stop_unit(unit.clone(), "replace".into()).await {
            Ok(job) => {
                // systemd itself sends SIGKILL after TimeoutStopUSec (= stop_timeout).
                let _ = self.wait_job(&job, timeout + Duration::from_secs(5)).await;
            }
            Err(e) => tracing::warn!(worker = id.0, unit = %unit, "StopUnit failed: {e}"),
        }
        if tokio::time::timeout(Duration::from_secs(5), worker.wait_exit())
            .await
            .is_err()
        {
            tracing::warn!(worker = id.0, unit = %unit, "unit still not inactive after StopUnit");
        }
    }

    async fn usage(&self, worker: &StartedWorker, measured: Option<Usage>) -> Option<Usage> {
        let unit = worker.unit.as_deref()?;
        let path = OwnedObjectPath::try_from(unit_path(unit)).ok()?;
        let service = self.service(&path).await.ok()?;
        let memory = service
            .memory_current()
            .await
            .ok()
            .filter(|m| *m != u64::MAX);
        let cpu = service
            .cpu_usage_n_sec()
            .await
            .ok()
            .filter(|c| *c != u64::MAX);
        // Accounting reads "[not set]" in some containers: fall back to /proc of the unit's
        // processes.
        let from_proc = measured;
        Some(Usage {
            cpu_time: cpu
                .map(Duration::from_nanos)
                .or(from_proc.map(|u| u.cpu_time))
                .unwrap_or_default(),
            memory_bytes: memory
                .or(from_proc.map(|u| u.memory_bytes))
                .unwrap_or_default(),
        })
    }

    async fn adopt(&self) -> Vec<Adopted> {
        let pattern = format!("baton-{}-w*.service", self.app);
        let units = match self
            .manager
            .list_units_by_patterns(vec![], vec![pattern])
            .await
        {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!("cannot list this app's worker units: {e}");
                return Vec::new();
            }
        };
        let mut adopted = Vec::new();
        for u in units {
            let (unit, active, path) = (u.0, u.3, u.6);
            if active != "active" {
                continue;
            }
            let Ok(service) = self.service(&path).await else {
                continue;
            };
            let env: HashMap<String, String> = service
                .environment()
                .await
                .unwrap_or_default()
                .into_iter()
                .filter_map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                })
                .collect();
            let field = |k: &str| env.get(k).and_then(|v| v.parse::<u64>().ok());
            let (Some(id), Some(generation), Some(port)) = (
                field("BATON_WORKER"),
                field("BATON_GENERATION"),
                field("PORT").and_then(|p| u16::try_from(p).ok()),
            ) else {
                continue;
            };
            if env.get("BATON_APP").map(String::as_str) != Some(self.app.as_str()) {
                continue;
            }
            let Ok(props) = self.properties(&path).await else {
                continue;
            };
            let Ok(changes) = props.receive_properties_changed().await else {
                continue;
            };
            let pid = service.main_pid().await.ok().filter(|p| *p > 0);
            let directory = service
                .working_directory()
                .await
                .ok()
                .filter(|d| !d.is_empty())
                .map(PathBuf::from);
            let process = self.follow(unit, path, changes, pid, true);
            adopted.push(Adopted {
                id: WorkerId(id),
                generation: super::Generation(generation),
                port,
                directory,
                process,
            });
        }
        adopted
    }

    async fn booted(&self, worker: &StartedWorker) {
        let Some(unit) = &worker.unit else { return };
        let Ok(weight) = prop("CPUWeight", 100u64) else {
            return;
        };
        if let Err(e) = self
            .manager
            .set_unit_properties(unit.clone(), true, vec![weight])
            .await
        {
            tracing::warn!(unit = %unit, "cannot raise the CPU weight of {unit} now that it is ready: {e}");
        }
    }

    fn processes(&self, worker: &StartedWorker) -> Vec<u32> {
        // Everything the unit runs is in the unit's cgroup.
        let Some(pid) = worker.pid else {
            return Vec::new();
        };
        match (&worker.unit, super::cgroup_of(pid)) {
            (Some(unit), Some(cgroup)) if cgroup.ends_with(&format!("/{unit}")) => {
                let procs = super::cgroup_processes(&cgroup);
                if procs.is_empty() { vec![pid] } else { procs }
            }
            _ => super::descendants(pid),
        }
    }

    fn workers_outlive_manager(&self) -> bool {
        self.own_unit.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_paths_are_bus_escaped() {
        assert_eq!(
            unit_path("baton-demo-w1.service"),
            "/org/freedesktop/systemd1/unit/baton_2ddemo_2dw1_2eservice"
        );
    }
}
