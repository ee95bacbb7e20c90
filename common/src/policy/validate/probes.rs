//! `[probe.NAME]`: the health probes, the largest section (Modbus TCP and RTU, registers, ranges, checks).

use super::*;

impl<'t> Checker<'_> {
    pub(super) fn probes(&mut self, root: &Tbl<'t>) -> Vec<Probe> {
        let mut out = Vec::new();
        for (name, p) in self.named(root, "probe") {
            if let Some(probe) = self.probe(name, &p) {
                out.push(probe);
            }
        }
        out
    }

    pub(super) fn probe(&mut self, name: String, p: &Tbl<'t>) -> Option<Probe> {
        const SERIAL: [&str; 4] = ["baud", "parity", "stop_bits", "data_bits"];
        self.keys(
            p,
            &[
                "tcp",
                "rtu",
                "baud",
                "parity",
                "stop_bits",
                "data_bits",
                "unit_id",
                "function",
                "address",
                "type",
                "count",
                "word_order",
                "scale",
                "offset",
                "interval",
                "timeout",
                "trip_after",
                "critical",
                "min",
                "max",
                "equals",
                "heartbeat",
                "deviation",
                "deviation_percent",
                "max_response",
            ],
        );
        let at_of = |key: &str| p.get(key).map(|n| n.at);

        // Where: Modbus TCP or RTU.
        let tcp = self.value(p, "tcp", |v| match v {
            Val::Str(s) => parse_modbus_tcp(s)
                .ok_or_else(|| expected("an IP address with an optional port like \"10.0.5.10:502\"")),
            _ => Err(expected("an IP address with an optional port like \"10.0.5.10:502\"")),
        });
        let rtu = self.abs_path(p, "rtu");
        let target = match (tcp.is_set(), rtu.is_set()) {
            (true, true) => {
                self.error_at_blamed(
                    p,
                    &[("tcp", at_of("tcp")), ("rtu", at_of("rtu"))],
                    "expected exactly one of tcp or rtu, found both",
                );
                None
            }
            (false, false) => {
                if let Some(at) = p.at {
                    self.error(
                        at,
                        p.path.clone(),
                        "expected exactly one of tcp (Modbus TCP) or rtu (Modbus RTU), found none",
                    );
                }
                None
            }
            (true, false) => {
                for key in SERIAL {
                    if let Some(node) = p.get(key) {
                        self.error(node.key_at, p.key(key), format!("{key} is only valid with rtu, not with tcp"));
                    }
                }
                tcp.value().map(|addr| ProbeTarget::Tcp { addr })
            }
            (false, true) => {
                let baud = self.integer(p, "baud", 1, i64::from(u32::MAX)).or(19200) as u32;
                let parity = self
                    .choice(p, "parity", &[("none", Parity::None), ("even", Parity::Even), ("odd", Parity::Odd)])
                    .or(Parity::Even);
                let stop_bits = self.integer(p, "stop_bits", 1, 2).or(1) as u8;
                let data_bits = self.integer(p, "data_bits", 7, 8).or(8) as u8;
                rtu.value().map(|device| ProbeTarget::Rtu { device, baud, parity, stop_bits, data_bits })
            }
        };

        // What: register kind, address, type.
        let unit_id = self.integer(p, "unit_id", 0, 247).or(1) as u8;
        let function = self.choice(
            p,
            "function",
            &[
                ("holding", RegisterKind::Holding),
                ("input", RegisterKind::Input),
                ("coils", RegisterKind::Coils),
                ("discrete", RegisterKind::Discrete),
            ],
        );
        let function_at = function.at();
        let function_valid = !matches!(function, Got::Invalid);
        let function = function.or(RegisterKind::Holding);
        let bits = matches!(function, RegisterKind::Coils | RegisterKind::Discrete);
        let address = self.integer(p, "address", 0, 65535);
        let address = self.required(p, "address", address).map(|a| a as u16);
        let data_type = self.choice(p, "type", &DataType::ALL.map(|t| (t.name(), t)));
        let type_at = data_type.at();
        let type_valid = !matches!(data_type, Got::Invalid);
        let data_type = data_type.or(if bits { DataType::Bool } else { DataType::U16 });
        let mut ok = true;
        if type_valid && function_valid && bits != (data_type == DataType::Bool) {
            let message = if bits {
                format!(
                    "coils and discrete inputs are single bits: expected type \"bool\", found \"{}\"",
                    data_type.name()
                )
            } else {
                "type \"bool\" is only for coils and discrete inputs (function = \"coils\" or \"discrete\")".to_string()
            };
            self.error_at_blamed(p, &[("function", function_at), ("type", type_at)], message);
            ok = false;
        }
        let words: u16 = match data_type {
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            _ => 1,
        };
        let count = match self.integer(p, "count", 1, 125) {
            Got::Ok(count, at) => {
                let count = count as u16;
                if type_valid && count < words {
                    self.error_at_blamed(
                        p,
                        &[("count", Some(at)), ("type", type_at)],
                        format!("count {count} is too small for type \"{}\", which needs {words}", data_type.name()),
                    );
                    ok = false;
                }
                count
            }
            _ => words,
        };
        let word_order =
            self.choice(p, "word_order", &[("big", WordOrder::Big), ("little", WordOrder::Little)]).or(WordOrder::Big);
        let scale = self.value(p, "scale", |v| match v {
            Val::Int(i) if *i != 0 => Ok(*i as f64),
            Val::Float(f) if f.is_finite() && *f != 0.0 => Ok(*f),
            _ => Err(expected("a finite, non-zero number")),
        });
        let scale = scale.or(1.0);
        let offset = self.number(p, "offset").or(0.0);

        // When: polling.
        let interval = self.duration(p, "interval", Duration::from_millis(10));
        let interval_at = interval.at();
        let interval_valid = !matches!(interval, Got::Invalid);
        let interval = interval.or(Duration::from_secs(1));
        let timeout = self.duration(p, "timeout", MS).or(Duration::from_secs(1));
        let trip_after = self.integer(p, "trip_after", 1, i64::from(u32::MAX)).or(3) as u32;
        let critical = self.boolean(p, "critical").or(true);

        // Checks.
        let mut checks = Vec::new();
        let min = self.number(p, "min");
        let max = self.number(p, "max");
        let any_check = ["min", "max", "equals", "heartbeat", "deviation", "deviation_percent", "max_response"]
            .iter()
            .any(|k| p.get(k).is_some());
        if let (Got::Ok(lo, lo_at), Got::Ok(hi, hi_at)) = (&min, &max) {
            if lo > hi {
                self.error_at_blamed(
                    p,
                    &[("min", Some(*lo_at)), ("max", Some(*hi_at))],
                    format!("min ({lo}) is greater than max ({hi})"),
                );
                ok = false;
            }
        }
        if min.is_set() || max.is_set() {
            checks.push(Check::Range { min: min.value(), max: max.value() });
        }
        if let Some(value) = self.number(p, "equals").value() {
            checks.push(Check::Equals { value });
        }
        if let Got::Ok(max_stale, at) = self.duration(p, "heartbeat", MS) {
            if interval_valid && max_stale <= interval {
                self.error_at_blamed(
                    p,
                    &[("heartbeat", Some(at)), ("interval", interval_at)],
                    format!(
                        "heartbeat ({}) must be longer than the probe's interval ({})",
                        format_duration(max_stale),
                        format_duration(interval)
                    ),
                );
                ok = false;
            }
            checks.push(Check::Heartbeat { max_stale });
        }
        let non_negative = |v: &Val| match v {
            Val::Int(i) if *i >= 0 => Ok(*i as f64),
            Val::Float(f) if f.is_finite() && *f >= 0.0 => Ok(*f),
            _ => Err(expected("a finite number >= 0")),
        };
        let abs = self.value(p, "deviation", non_negative);
        let percent = self.value(p, "deviation_percent", non_negative);
        if abs.is_set() || percent.is_set() {
            checks.push(Check::Deviation { abs: abs.value(), percent: percent.value() });
        }
        if let Some(max) = self.duration(p, "max_response", MS).value() {
            checks.push(Check::ResponseTime { max });
        }
        if !any_check {
            if let Some(at) = p.at {
                self.error(
                    at,
                    p.path.clone(),
                    "expected at least one check (min, max, equals, heartbeat, deviation, deviation_percent or max_response), found none",
                );
            }
            ok = false;
        }

        if !ok {
            return None;
        }
        Some(Probe {
            name,
            target: target?,
            unit_id,
            function,
            address: address?,
            count,
            data_type,
            word_order,
            scale,
            offset,
            interval,
            timeout,
            trip_after,
            critical,
            checks,
        })
    }
}
