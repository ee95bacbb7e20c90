//! The policy's sections other than probes, one method of [`Checker`] each.

use super::*;

impl<'t> Checker<'_> {
    pub(super) fn gateway(&mut self, root: &Tbl<'t>) -> Option<Gateway> {
        let t = self.section(root, "gateway");
        self.keys(&t, &["id", "compatible"]);
        let id = self.value(&t, "id", |v| match v {
            Val::Str(s) if valid_id(s) => Ok(s.clone()),
            _ => Err(expected("a gateway id made of letters, digits, \".\", \"_\" and \"-\"")),
        });
        let id = self.required(&t, "id", id);
        let compatible = self.string(&t, "compatible");
        let compatible = self.required(&t, "compatible", compatible);
        Some(Gateway { id: id?, compatible: compatible? })
    }

    pub(super) fn server(&mut self, root: &Tbl<'t>) -> Option<PatchServer> {
        let Got::Ok(t, _) = self.table(root, "server") else { return None };
        self.keys(&t, &["url", "ca", "client_cert", "client_key", "addresses"]);
        let url = self.value(&t, "url", |v| match v {
            Val::Str(s) => parse_https_url(s).map_err(Bad::Message),
            _ => Err(expected("an https:// URL")),
        });
        let url = self.required(&t, "url", url);
        let ca = self.abs_path(&t, "ca");
        let ca = self.required(&t, "ca", ca);
        let cert = self.abs_path(&t, "client_cert");
        let cert = self.required(&t, "client_cert", cert);
        let key = self.abs_path(&t, "client_key");
        let key = self.required(&t, "client_key", key);
        let addresses = match self.array(&t, "addresses") {
            Got::Ok(items, _) => items
                .iter()
                .filter_map(|n| {
                    self.node(n, t.key("addresses"), |v| match v {
                        Val::Str(s) => s.parse::<IpAddr>().map_err(|_| expected("an IP address like \"10.0.5.20\"")),
                        _ => Err(expected("an IP address like \"10.0.5.20\"")),
                    })
                    .value()
                })
                .collect(),
            _ => Vec::new(),
        };
        let (url, host, port) = url?;
        Some(PatchServer { url, host, port, ca: ca?, client_cert: cert?, client_key: key?, addresses })
    }

    pub(super) fn trust(&mut self, root: &Tbl<'t>) -> Option<Trust> {
        let t = self.section(root, "trust");
        self.keys(&t, &["anchors", "allowed_signers", "allow_downgrade", "crl", "crl_issuer", "time_source"]);
        let anchors = match self.array(&t, "anchors") {
            Got::Ok(items, at) => {
                if items.is_empty() {
                    self.error(at, t.key("anchors"), "expected at least one trust anchor, found an empty array");
                    None
                } else {
                    let paths: Vec<Option<PathBuf>> =
                        items.iter().map(|n| self.path_node(n, t.key("anchors")).value()).collect();
                    paths.into_iter().collect::<Option<Vec<_>>>()
                }
            }
            Got::Invalid => None,
            Got::Absent => {
                self.missing(&t, "anchors");
                None
            }
        };
        let allowed_signers = match self.array(&t, "allowed_signers") {
            Got::Ok(items, _) => items
                .iter()
                .filter_map(|n| {
                    self.node(n, t.key("allowed_signers"), |v| match v {
                        Val::Str(s) if !s.trim().is_empty() => Ok(s.clone()),
                        _ => Err(expected("a signer's common name (a non-empty string)")),
                    })
                    .value()
                })
                .collect(),
            _ => Vec::new(),
        };
        let allow_downgrade = self.boolean(&t, "allow_downgrade").or(false);
        let crl = match self.abs_path(&t, "crl") {
            Got::Ok(path, at) => Some((path, at)),
            _ => None,
        };
        let crl_issuer = match self.abs_path(&t, "crl_issuer") {
            Got::Ok(path, at) => Some((path, at)),
            _ => None,
        };
        if let (Some((_, at)), None) = (&crl_issuer, &crl) {
            self.error(*at, t.key("crl_issuer"), "names the issuer of a CRL, but [trust] has no crl");
        }
        if let (Some(anchors), Some((crl, at))) = (&anchors, &crl) {
            self.check_crl(*at, t.key("crl"), anchors, crl, crl_issuer.as_ref().map(|(p, _)| p.as_path()));
        }
        let crl_issuer = crl_issuer.map(|(p, _)| p);
        let crl = crl.map(|(p, _)| p);
        let time_source = self
            .choice(
                &t,
                "time_source",
                &[("system", TimeSource::System), ("system-with-floor", TimeSource::SystemWithFloor)],
            )
            .or(TimeSource::SystemWithFloor);
        Some(Trust { anchors: anchors?, allowed_signers, allow_downgrade, crl, crl_issuer, time_source })
    }

    /// The limits, and where `max_window` was set: `Some(None)` for the default, `None` when it is invalid.
    pub(super) fn limits(&mut self, root: &Tbl<'t>) -> (Limits, Option<Option<At>>) {
        let t = self.section(root, "limits");
        self.keys(&t, &["max_window", "max_download"]);
        let max_window = self.duration_within(&t, "max_window", MS, Some(DAY));
        let at = match max_window {
            Got::Ok(_, at) => Some(Some(at)),
            Got::Absent => Some(None),
            Got::Invalid => None,
        };
        let max_window = max_window.or(Duration::from_secs(4 * 3600));
        let max_download = self.size(&t, "max_download").or(1 << 30);
        (Limits { max_window, max_download }, at)
    }

    pub(super) fn access(&mut self, root: &Tbl<'t>) -> Access {
        let t = self.section(root, "access");
        self.keys(&t, &["group"]);
        let group = self.value(&t, "group", |v| match v {
            Val::Str(s) if valid_group(s) => Ok(s.clone()),
            _ => Err(expected(
                "a group name (a letter or \"_\", then letters, digits, \"_\", \".\" or \"-\"; at most 32 characters)",
            )),
        });
        Access { group: group.value().unwrap_or_else(|| "otpatch".to_string()) }
    }

    pub(super) fn rollback(&mut self, root: &Tbl<'t>) -> RollbackRules {
        let t = self.section(root, "rollback");
        self.keys(&t, &["observation", "on_degraded", "allow_force", "transition_timeout"]);
        RollbackRules {
            observation: self.duration(&t, "observation", MS).or(Duration::from_secs(300)),
            on_degraded: self
                .choice(&t, "on_degraded", &[("keep", DegradedAction::Keep), ("rollback", DegradedAction::Rollback)])
                .or(DegradedAction::Keep),
            allow_force: self.boolean(&t, "allow_force").or(false),
            transition_timeout: self.duration(&t, "transition_timeout", MS).or(Duration::from_secs(60)),
        }
    }

    pub(super) fn ab(&mut self, root: &Tbl<'t>) -> AbRules {
        let t = self.section(root, "ab");
        self.keys(&t, &["reboot", "reboot_timeout", "fallback_bundle"]);
        let fallback_bundle = self.value(&t, "fallback_bundle", |v| match v {
            Val::Str(s)
                if s.ends_with(".raucb")
                    && !s.starts_with('.')
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c)) =>
            {
                Ok(s.clone())
            }
            _ => Err(expected("a RAUC bundle's file name on the patch server, like \"gateway-os-2.1.raucb\"")),
        });
        AbRules {
            reboot: self
                .choice(&t, "reboot", &[("never", RebootPolicy::Never), ("in-window", RebootPolicy::InWindow)])
                .or(RebootPolicy::Never),
            reboot_timeout: self.duration(&t, "reboot_timeout", MS).or(Duration::from_secs(300)),
            fallback_bundle: fallback_bundle.value(),
        }
    }

    pub(super) fn segmentation(&mut self, root: &Tbl<'t>) -> Segmentation {
        let t = self.section(root, "segmentation");
        self.keys(&t, &["enabled", "backend", "log_drops", "allow"]);
        let enabled = self.boolean(&t, "enabled").or(true);
        let backend = self
            .choice(
                &t,
                "backend",
                &[
                    ("auto", FirewallBackend::Auto),
                    ("nftables", FirewallBackend::Nftables),
                    ("iptables", FirewallBackend::Iptables),
                ],
            )
            .or(FirewallBackend::Auto);
        let log_drops = self.boolean(&t, "log_drops").or(false);
        let mut allow = Vec::new();
        for (name, f) in self.named(&t, "allow") {
            self.keys(&f, &["address", "port", "protocol", "direction", "routed"]);
            let address = self.value(&f, "address", |v| match v {
                Val::Str(s) => s.parse::<IpAddr>().map_err(|_| expected("an IP address like \"10.0.5.20\"")),
                _ => Err(expected("an IP address like \"10.0.5.20\"")),
            });
            let address = self.required(&f, "address", address);
            let port = self.integer(&f, "port", 1, 65535);
            let port = self.required(&f, "port", port);
            let protocol =
                self.choice(&f, "protocol", &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)]).or(Protocol::Tcp);
            let direction = self
                .choice(
                    &f,
                    "direction",
                    &[("outbound", Direction::Outbound), ("inbound", Direction::Inbound), ("both", Direction::Both)],
                )
                .or(Direction::Outbound);
            let routed = self.boolean(&f, "routed").or(false);
            if let (Some(address), Some(port)) = (address, port) {
                allow.push(Flow { name, address, port: port as u16, protocol, direction, routed });
            }
        }
        Segmentation { enabled, backend, log_drops, allow }
    }

    /// `max_window_at` as returned by [`Checker::limits`].
    pub(super) fn windows(
        &mut self,
        root: &Tbl<'t>,
        max_window: Duration,
        max_window_at: Option<Option<At>>,
    ) -> Vec<RecurringWindow> {
        let mut out = Vec::new();
        for (name, w) in self.named(root, "window") {
            self.keys(&w, &["days", "start", "duration", "timezone", "auto_start"]);
            let days = match self.array(&w, "days") {
                Got::Ok(items, at) => self.days(&w, items, at),
                Got::Invalid => None,
                Got::Absent => {
                    self.missing(&w, "days");
                    None
                }
            };
            let start =
                self.value(&w, "start", |v| parse_start(v).ok_or_else(|| expected("a local time like \"02:00\"")));
            let start = self.required(&w, "start", start);
            let duration = self.duration(&w, "duration", MS);
            let duration_at = duration.at();
            let duration = self.required(&w, "duration", duration);
            if let (Some(d), Some(d_at), Some(max_window_at)) = (duration, duration_at, max_window_at) {
                if d > max_window {
                    match max_window_at {
                        Some(m_at) if m_at > d_at => self.error(
                            m_at,
                            "limits.max_window".into(),
                            format!(
                                "{} is shorter than window {name:?}, which lasts {} (set at {})",
                                format_duration(max_window),
                                format_duration(d),
                                self.place(d_at)
                            ),
                        ),
                        _ => {
                            let limit = match max_window_at {
                                Some(m_at) => format!("{}, set at {}", format_duration(max_window), self.place(m_at)),
                                None => format!("{}, the default", format_duration(max_window)),
                            };
                            self.error(
                                d_at,
                                w.key("duration"),
                                format!("window lasts {}, longer than limits.max_window ({limit})", format_duration(d)),
                            )
                        }
                    }
                }
            }
            let timezone = self.value(&w, "timezone", |v| match v {
                Val::Str(s) if jiff::tz::TimeZone::get(s).is_ok() => Ok(s.clone()),
                Val::Str(s) => Err(Bad::Message(format!(
                    "unknown time zone {s:?}: expected an IANA time zone name like \"Europe/Berlin\""
                ))),
                _ => Err(expected("an IANA time zone name like \"Europe/Berlin\"")),
            });
            let timezone = self.required(&w, "timezone", timezone);
            let auto_start = self.boolean(&w, "auto_start").or(true);
            if let (Some(days), Some(start), Some(duration), Some(timezone)) = (days, start, duration, timezone) {
                out.push(RecurringWindow { name, days, start, duration, timezone, auto_start });
            }
        }
        out
    }

    pub(super) fn days(&mut self, w: &Tbl, items: &[Node], at: At) -> Option<Vec<jiff::civil::Weekday>> {
        if items.is_empty() {
            self.error(at, w.key("days"), "expected at least one day like \"sun\", found an empty array");
            return None;
        }
        let mut days = Vec::new();
        let mut ok = true;
        for item in items {
            let day = self.node(item, w.key("days"), |v| match v {
                Val::Str(s) => weekdays::parse(s).ok_or_else(|| expected("a day of the week (\"mon\" .. \"sun\")")),
                _ => Err(expected("a day of the week (\"mon\" .. \"sun\")")),
            });
            match day {
                Got::Ok(day, at) if days.contains(&day) => {
                    self.error(at, w.key("days"), format!("{:?} is listed twice", weekdays::name(day)));
                    ok = false;
                }
                Got::Ok(day, _) => days.push(day),
                _ => ok = false,
            }
        }
        ok.then_some(days)
    }

    pub(super) fn processes(&mut self, root: &Tbl<'t>) -> Vec<CriticalProcess> {
        let mut out = Vec::new();
        for (name, p) in self.named(root, "process") {
            self.keys(&p, &["unit", "pidfile", "exe", "user", "tcp_established", "pre_dump"]);
            let unit = self.value(&p, "unit", |v| match v {
                Val::Str(s) if valid_service(s) => Ok(ProcessSelector::Unit(s.clone())),
                _ => Err(expected("a systemd service unit like \"softplc.service\"")),
            });
            let pidfile = self.abs_path(&p, "pidfile");
            let exe = self.abs_path(&p, "exe");
            let set: Vec<(&str, Option<At>)> =
                [("unit", unit.is_set()), ("pidfile", pidfile.is_set()), ("exe", exe.is_set())]
                    .into_iter()
                    .filter(|(_, set)| *set)
                    .map(|(k, _)| (k, p.get(k).map(|n| n.at)))
                    .collect();
            let selector = match set.len() {
                0 => {
                    if let Some(at) = p.at {
                        self.error(at, p.path.clone(), "expected exactly one of unit, pidfile or exe, found none");
                    }
                    None
                }
                1 => unit
                    .value()
                    .or(pidfile.value().map(ProcessSelector::Pidfile))
                    .or(exe.value().map(ProcessSelector::Exe)),
                _ => {
                    let names: Vec<&str> = set.iter().map(|(k, _)| *k).collect();
                    self.error_at_blamed(
                        &p,
                        &set,
                        format!("expected exactly one of unit, pidfile or exe, found {}", names.join(" and ")),
                    );
                    None
                }
            };
            let tcp_established = self.boolean(&p, "tcp_established").or(false);
            let pre_dump = self.boolean(&p, "pre_dump").or(false);
            let is_exe = matches!(selector, Some(ProcessSelector::Exe(_)));
            let user = self.value(&p, "user", |v| match v {
                Val::Str(_) if !is_exe => Err(Bad::Message(
                    "user applies to an exe selector only (a unit or pidfile names one process)".into(),
                )),
                Val::Str(s) if valid_user(s) => Ok(s.clone()),
                _ => Err(expected("a user name or a numeric uid, like \"plc\" or \"1000\"")),
            });
            if let Some(selector) = selector {
                out.push(CriticalProcess { name, selector, tcp_established, pre_dump, user: user.value() });
            }
        }
        out
    }
}
