//! Prometheus text format, served at `/metrics` on the control socket.

use crate::status::Snapshot;
use std::fmt::Write as _;

pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let app = &s.app;
    let _ = writeln!(
        out,
        "# HELP baton_generation The generation new workers come from."
    );
    let _ = writeln!(out, "# TYPE baton_generation gauge");
    let _ = writeln!(out, "baton_generation{{app=\"{app}\"}} {}", s.generation);
    let _ = writeln!(
        out,
        "# HELP baton_queue Requests waiting for a free worker."
    );
    let _ = writeln!(out, "# TYPE baton_queue gauge");
    let _ = writeln!(out, "baton_queue{{app=\"{app}\"}} {}", s.queue);
    let _ = writeln!(
        out,
        "# HELP baton_resisting 1 while resisting a deployment error."
    );
    let _ = writeln!(out, "# TYPE baton_resisting gauge");
    let _ = writeln!(
        out,
        "baton_resisting{{app=\"{app}\"}} {}",
        u8::from(s.resisting_deployment_error.is_some())
    );
    let _ = writeln!(out, "# HELP baton_workers Workers by state.");
    let _ = writeln!(out, "# TYPE baton_workers gauge");
    for state in ["spawning", "ready", "draining", "stopping"] {
        let n = s.workers.iter().filter(|w| w.state == state).count();
        let _ = writeln!(out, "baton_workers{{app=\"{app}\",state=\"{state}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP baton_in_flight Requests being served by workers."
    );
    let _ = writeln!(out, "# TYPE baton_in_flight gauge");
    let in_flight: usize = s.workers.iter().map(|w| w.sessions).sum();
    let _ = writeln!(out, "baton_in_flight{{app=\"{app}\"}} {in_flight}");
    let _ = writeln!(
        out,
        "# HELP baton_processed_total Requests served by the current workers."
    );
    let _ = writeln!(out, "# TYPE baton_processed_total counter");
    let processed: u64 = s.workers.iter().map(|w| w.processed).sum();
    let _ = writeln!(out, "baton_processed_total{{app=\"{app}\"}} {processed}");
    out
}
