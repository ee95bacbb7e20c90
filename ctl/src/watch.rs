//! `otpatchctl watch`: follows the daemon live.
//!
//! The daemon's signals (`Transition`, `HealthVerdict`, `WindowCompleted`, and `PropertiesChanged` for
//! `Progress`) are read from one stream, in the order the daemon sent them, so that events are printed in the
//! order they happened (a transition before the progress it leads to, the last transition before the
//! `WindowCompleted`).

use std::collections::HashMap;
use std::future::poll_fn;
use std::io::IsTerminal;
use std::pin::Pin;
use std::time::Duration;

use futures_core::Stream;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use otpatch_common::api::{Signal, StatusSnapshot, BUS_NAME, INTERFACE, OBJECT_PATH};
use otpatch_common::units::format_duration;
use serde_json::json;

use crate::render::or_dash;
use zbus::OwnedVariant;

use crate::cli::WatchArgs;
use crate::client::{parse_status, Client};
use crate::error::{exit, names, CtlError};
use crate::{out, render};

/// The exit code for a window outcome: 0 committed or up-to-date, 9 rolled back, 10 failed, 13 installed with the
/// reboot pending, 1 anything else.
pub fn outcome_code(outcome: &str) -> u8 {
    otpatch_common::api::OutcomeKind::of(outcome).map_or(exit::FAILURE, |k| k.exit_code().code())
}

/// The first line of `watch`: where the daemon is now.
pub fn status_summary(s: &StatusSnapshot, now: Timestamp, tz: &TimeZone) -> String {
    let now = now.as_second();
    let mut parts = vec![format!("state {}", or_dash(&s.state))];
    if s.active_window.is_empty() {
        parts.push("no active window".into());
        if !s.next_window.is_empty() {
            let when = if s.next_window_start > 0 {
                format!(
                    " at {} (in {})",
                    render::local_time(s.next_window_start, tz),
                    render::span(s.next_window_start - now)
                )
            } else {
                String::new()
            };
            parts.push(format!("next window {}{when}", s.next_window));
        }
    } else if s.active_window_end > 0 {
        let left = s.active_window_end - now;
        let when = if left >= 0 {
            format!("{} left", render::span(left))
        } else {
            format!("overran by {}", render::span(left))
        };
        parts.push(format!("window {} ({when})", s.active_window));
    } else {
        parts.push(format!("window {}", s.active_window));
    }
    if !s.last_error.is_empty() {
        parts.push(format!("last error: {}", s.last_error));
    }
    if s.active_window.is_empty() && !s.last_outcome.is_empty() {
        parts.push(format!("last outcome: {}", s.last_outcome));
    }
    parts.join("; ")
}

pub fn transition_text(window: &str, from: &str, to: &str, event: &str) -> String {
    let event = if event.is_empty() { String::new() } else { format!(" ({event})") };
    format!("{}: {from} -> {to}{event}", or_dash(window))
}

pub fn verdict_text(window: &str, verdict: &str, reason: &str) -> String {
    let reason = if reason.is_empty() { String::new() } else { format!(": {reason}") };
    format!("{}: health {verdict}{reason}", or_dash(window))
}

pub fn completed_text(window: &str, outcome: &str) -> String {
    format!("{}: window closed: {outcome}", or_dash(window))
}

/// Prints events as timestamped lines (or JSON lines), keeping a progress bar on its own line on a terminal.
#[derive(Debug)]
struct Printer {
    json: bool,
    tty: bool,
    tz: TimeZone,
    /// A progress bar was drawn without a newline.
    bar_open: bool,
    last_progress: Option<(i32, String)>,
}

impl Printer {
    fn line(&mut self, text: &str) {
        self.close_bar();
        out::line(&format!("{}  {text}", render::clock(Timestamp::now(), &self.tz)));
    }

    fn event(&mut self, kind: &str, mut fields: serde_json::Value) {
        fields["type"] = json!(kind);
        fields["time"] =
            json!(Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| Timestamp::now()).to_string());
        out::json(&fields);
    }

    fn close_bar(&mut self) {
        if self.bar_open {
            out::write("\n");
            self.bar_open = false;
        }
    }

    fn status(&mut self, raw: &serde_json::Value, s: &StatusSnapshot) {
        self.last_progress = Some((s.progress_percent, s.progress_message.clone()));
        if self.json {
            self.event("status", json!({"status": raw}));
            return;
        }
        self.line(&status_summary(s, Timestamp::now(), &self.tz));
        if s.active_window.is_empty() {
            return;
        }
        if let Some(bar) = render::progress_line(s.progress_percent, &s.progress_message) {
            self.draw_bar(&bar);
        }
    }

    fn progress(&mut self, percent: i32, message: String) {
        if self.last_progress.as_ref() == Some(&(percent, message.clone())) {
            return;
        }
        if self.json {
            self.event("progress", json!({"percent": percent, "message": message}));
        } else {
            match render::progress_line(percent, &message) {
                Some(bar) => self.draw_bar(&bar),
                None => self.close_bar(),
            }
        }
        self.last_progress = Some((percent, message));
    }

    fn draw_bar(&mut self, bar: &str) {
        let stamp = render::clock(Timestamp::now(), &self.tz);
        if self.tty {
            out::write_trusted(&format!("\r\x1b[2K{stamp}  {}", out::escape(bar)));
            self.bar_open = true;
        } else {
            out::line(&format!("{stamp}  {bar}"));
        }
    }
}

/// The next item of a stream.
async fn next<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
}

fn bus_lost() -> CtlError {
    CtlError::new(exit::UNREACHABLE, names::BUS_LOST, "the connection to the system bus was lost")
}

/// Reads the status as both the raw JSON (passed through in `--json` mode) and the snapshot.
async fn status(client: &Client) -> Result<(serde_json::Value, StatusSnapshot), CtlError> {
    let text = client.status_text().await?;
    let snapshot = parse_status(&text)?;
    let raw = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    Ok((raw, snapshot))
}

/// What one message from the daemon means to `watch`.
#[derive(Debug, PartialEq)]
enum Event {
    /// One of the daemon's own signals.
    Signal(Signal),
    /// `Progress` changed; `None` when the change only invalidated it (its value must be read).
    Progress(Option<(i32, String)>),
}

/// Reads a signal of the daemon's object; `None` for anything `watch` does not show.
fn event(msg: &zbus::Message) -> Option<Event> {
    if let Some(s) = Signal::from_message(msg) {
        return Some(Event::Signal(s));
    }
    let header = msg.header();
    let interface = header.interface()?.as_str();
    let member = header.member()?.as_str();
    let body = msg.body();
    match (interface, member) {
        ("org.freedesktop.DBus.Properties", "PropertiesChanged") => {
            let (iface, mut changed, invalidated) =
                body.deserialize::<(String, HashMap<String, OwnedVariant>, Vec<String>)>().ok()?;
            if iface != INTERFACE {
                return None;
            }
            if let Some(value) = changed.remove("Progress") {
                return Some(Event::Progress(<(i32, String)>::try_from(value).ok()));
            }
            invalidated.iter().any(|p| p == "Progress").then_some(Event::Progress(None))
        }
        _ => None,
    }
}

pub async fn run(args: &WatchArgs, json: bool, timeout: Duration) -> Result<u8, CtlError> {
    let client = Client::connect(timeout).await?;
    let proxy = &client.proxy;
    // Every signal of the daemon's object, its PropertiesChanged included, on one stream: printed in the order
    // sent. Subscribed before the state is read, so that nothing that happens in between is missed.
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(BUS_NAME)
        .path(OBJECT_PATH)
        .build()
        .map_err(|e| client.err(e))?;
    let mut signals =
        zbus::MessageStream::for_match_rule(rule, proxy.inner().connection(), None).await.map_err(|e| client.err(e))?;
    let mut owner = proxy.inner().receive_owner_changed().await.map_err(|e| client.err(e))?;

    let mut p = Printer {
        json,
        tty: std::io::stdout().is_terminal(),
        tz: TimeZone::system(),
        bar_open: false,
        last_progress: None,
    };
    let (raw, snapshot) = status(&client).await?;
    p.status(&raw, &snapshot);

    let deadline = args.max_wait.map(|d| tokio::time::Instant::now() + d);
    let give_up = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(give_up);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    let code = loop {
        tokio::select! {
            msg = next(&mut signals) => {
                let msg = msg.ok_or_else(bus_lost)?.map_err(|e| client.err(e))?;
                match event(&msg) {
                    Some(Event::Signal(Signal::Transition { window, from, to, event })) => {
                        if json {
                            p.event("transition", json!({"window": window, "from": from, "to": to, "event": event}));
                        } else {
                            p.line(&transition_text(&window, &from, &to, &event));
                        }
                    }
                    Some(Event::Signal(Signal::HealthVerdict { window, verdict, reason })) => {
                        if json {
                            p.event("health", json!({"window": window, "verdict": verdict, "reason": reason}));
                        } else {
                            p.line(&verdict_text(&window, &verdict, &reason));
                        }
                    }
                    Some(Event::Progress(value)) => {
                        let value = match value {
                            Some(v) => Some(v),
                            None => proxy.progress().await.ok(),
                        };
                        if let Some((percent, message)) = value {
                            p.progress(percent, message);
                        }
                    }
                    Some(Event::Signal(Signal::WindowCompleted { window, outcome })) => {
                        if json {
                            p.event("completed", json!({"window": window, "outcome": outcome}));
                        } else {
                            p.line(&completed_text(&window, &outcome));
                        }
                        if args.exit_on_complete {
                            let code = outcome_code(&outcome);
                            if code == exit::FAILURE && !json {
                                out::error_line(&format!("otpatchctl: window {window} closed with an outcome otpatchctl does not know: {outcome}"));
                            }
                            break code;
                        }
                    }
                    Some(Event::Signal(Signal::ProbeResults { .. })) | None => {}
                }
            }
            owner_changed = next(&mut owner) => {
                match owner_changed.ok_or_else(bus_lost)? {
                    None => {
                        if json {
                            p.event("daemon", json!({"present": false}));
                        } else {
                            p.line("otpatchd left the bus; waiting for it to come back");
                        }
                    }
                    Some(_) => {
                        if json {
                            p.event("daemon", json!({"present": true}));
                        } else {
                            p.line("otpatchd is back on the bus");
                        }
                        if let Ok((raw, snapshot)) = status(&client).await {
                            p.status(&raw, &snapshot);
                        }
                    }
                }
            }
            () = &mut give_up => {
                p.close_bar();
                let what = if args.exit_on_complete { "no window completed" } else { "stopped watching" };
                let waited = format_duration(args.max_wait.unwrap_or_default());
                return Err(CtlError::new(exit::WAIT_TIMEOUT, names::WAIT_TIMEOUT, format!("{what} after {waited} (--max-wait)")));
            }
            _ = &mut ctrl_c => {
                p.close_bar();
                break exit::INTERRUPTED;
            }
        }
    };
    p.close_bar();
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_map_to_exit_codes() {
        assert_eq!(outcome_code("committed"), 0);
        assert_eq!(outcome_code("committed: livepatch 4.2"), 0);
        assert_eq!(outcome_code("up-to-date"), 0);
        assert_eq!(outcome_code("rolled-back: probe boiler-temp out of range"), 9);
        assert_eq!(outcome_code("installed 2.1.0 into slot B, reboot pending"), 13);
        assert_eq!(outcome_code("failed: signature expired"), 10);
        assert_eq!(outcome_code("cancelled"), 1);
        assert_eq!(outcome_code(""), 1);
    }

    #[test]
    fn event_texts() {
        assert_eq!(
            transition_text("w-1", "armed", "segmented", "segment-applied"),
            "w-1: armed -> segmented (segment-applied)"
        );
        assert_eq!(transition_text("", "idle", "armed", ""), "-: idle -> armed");
        assert_eq!(
            verdict_text("w-1", "degraded", "probe flow: 3 misses"),
            "w-1: health degraded: probe flow: 3 misses"
        );
        assert_eq!(completed_text("w-1", "committed"), "w-1: window closed: committed");
    }

    fn signal<B>(iface: &str, member: &str, body: &B) -> zbus::Message
    where
        B: serde::Serialize + zbus::wire::DynamicType,
    {
        zbus::Message::signal(OBJECT_PATH, iface, member).build(body).expect("a signal")
    }

    #[test]
    fn signals_are_read() {
        let m = signal(INTERFACE, "Transition", &("w-1", "armed", "segmented", "segment-applied"));
        assert_eq!(
            event(&m),
            Some(Event::Signal(Signal::Transition {
                window: "w-1".into(),
                from: "armed".into(),
                to: "segmented".into(),
                event: "segment-applied".into()
            }))
        );
        let m = signal(INTERFACE, "HealthVerdict", &("w-1", "degraded", "slow"));
        assert_eq!(
            event(&m),
            Some(Event::Signal(Signal::HealthVerdict {
                window: "w-1".into(),
                verdict: "degraded".into(),
                reason: "slow".into()
            }))
        );
        let m = signal(INTERFACE, "WindowCompleted", &("w-1", "committed"));
        assert_eq!(
            event(&m),
            Some(Event::Signal(Signal::WindowCompleted { window: "w-1".into(), outcome: "committed".into() }))
        );
        let m = signal(INTERFACE, "Unknown", &("x",));
        assert_eq!(event(&m), None);
        let m = signal(INTERFACE, "Transition", &("too", "few"));
        assert_eq!(event(&m), None, "a malformed signal is skipped");
    }

    #[test]
    fn progress_changes_are_read() {
        const PROPS: &str = "org.freedesktop.DBus.Properties";
        let changed: HashMap<&str, zbus::Variant<'_>> =
            HashMap::from([("Progress", zbus::Variant::from((40i32, "installing"))), ("State", "applying".into())]);
        let m = signal(PROPS, "PropertiesChanged", &(INTERFACE, changed, Vec::<&str>::new()));
        assert_eq!(event(&m), Some(Event::Progress(Some((40, "installing".into())))));

        let m = signal(
            PROPS,
            "PropertiesChanged",
            &(INTERFACE, HashMap::<&str, zbus::Variant<'_>>::new(), vec!["Progress"]),
        );
        assert_eq!(event(&m), Some(Event::Progress(None)), "invalidated: to be read");

        let state_only: HashMap<&str, zbus::Variant<'_>> = HashMap::from([("State", "applying".into())]);
        let m = signal(PROPS, "PropertiesChanged", &(INTERFACE, state_only, Vec::<&str>::new()));
        assert_eq!(event(&m), None);

        let other: HashMap<&str, zbus::Variant<'_>> = HashMap::from([("Progress", zbus::Variant::from((1i32, "x")))]);
        let m = signal(PROPS, "PropertiesChanged", &("org.example.Other", other, Vec::<&str>::new()));
        assert_eq!(event(&m), None, "another interface's Progress");
    }

    #[test]
    fn summary_of_a_running_window() {
        let now = Timestamp::from_second(1_796_086_800).expect("valid");
        let s = StatusSnapshot {
            state: "applying".into(),
            active_window: "w-1".into(),
            active_window_end: 1_796_086_800 + 3000,
            ..StatusSnapshot::default()
        };
        assert_eq!(status_summary(&s, now, &TimeZone::UTC), "state applying; window w-1 (50m left)");
        let s = StatusSnapshot {
            state: "idle".into(),
            next_window: "nightly@2026-12-02".into(),
            next_window_start: 1_796_086_800 + 86_400,
            last_outcome: "rolled-back: probe".into(),
            ..StatusSnapshot::default()
        };
        assert_eq!(
            status_summary(&s, now, &TimeZone::UTC),
            "state idle; no active window; next window nightly@2026-12-02 at 2026-12-02 01:00 +00:00 (in 1d); \
             last outcome: rolled-back: probe"
        );
    }
}
