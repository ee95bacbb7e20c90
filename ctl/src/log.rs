//! `otpatchctl log`: reads the audit log page by page, prints it or verifies its hash chain.

use std::future::Future;

use otpatch_common::audit::{verify_chain, AuditRecord, ChainError, GENESIS};

use crate::cli::LogArgs;
use crate::client::Client;
use crate::error::{exit, names, CtlError};
use crate::{out, render};

/// Records asked for per `GetAuditLog` call.
pub const PAGE: u32 = 500;
/// Pages read at most (5 million records), so a daemon that never stops answering cannot keep us looping.
pub const MAX_PAGES: usize = 10_000;

/// How reading ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paging {
    /// A page came back short: the log was read to its end.
    Complete,
    /// [`MAX_PAGES`] pages were read and the log went on.
    Truncated,
}

/// Calls `fetch(from_seq, max)` from `from` until a page comes back with fewer than [`PAGE`] lines, handing each
/// page to `page`. Stops with an error when the sequence numbers do not advance.
pub async fn read_pages<F, Fut>(
    from: u64,
    mut fetch: F,
    mut page: impl FnMut(&[String]) -> Result<(), CtlError>,
) -> Result<Paging, CtlError>
where
    F: FnMut(u64, u32) -> Fut,
    Fut: Future<Output = Result<Vec<String>, CtlError>>,
{
    let mut next = from;
    for _ in 0..MAX_PAGES {
        let lines = fetch(next, PAGE).await?;
        page(&lines)?;
        if lines.len() < PAGE as usize {
            return Ok(Paging::Complete);
        }
        let last = lines.iter().rev().find_map(|l| seq_of(l));
        let after = match last {
            Some(seq) => seq.saturating_add(1),
            None => next.saturating_add(lines.len() as u64),
        };
        if after <= next {
            return Err(CtlError::failed(format!(
                "otpatchd answered GetAuditLog({next}) with records that do not advance (last seq {}); stopping",
                after.saturating_sub(1)
            )));
        }
        next = after;
    }
    Ok(Paging::Truncated)
}

fn seq_of(line: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(line).ok()?.get("seq")?.as_u64()
}

/// Verifies `records`, read from sequence number `from`. From 1 the chain is anchored at [`GENESIS`]; from
/// later, at the first record's own `prev` (which is then taken on trust).
pub fn verify(records: &[AuditRecord], from: u64) -> Result<(), ChainError> {
    let Some(first) = records.first() else { return Ok(()) };
    if first.seq != from {
        return Err(ChainError::Sequence { seq: first.seq, expected: from });
    }
    let start = if from == 1 { GENESIS } else { first.prev.as_str() };
    verify_chain(records, start)
}

pub async fn run(client: &Client, args: &LogArgs, json: bool) -> Result<u8, CtlError> {
    let fetch =
        |from: u64, max: u32| async move { client.proxy.get_audit_log(from, max).await.map_err(|e| client.err(e)) };
    if !args.verify {
        let paging = read_pages(args.from, fetch, |lines| {
            for l in lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty()) {
                if json {
                    // Verbatim, so that the records can be re-hashed by another tool.
                    out::line(l);
                } else {
                    match serde_json::from_str::<AuditRecord>(l) {
                        Ok(r) => out::line(&render::audit_line(&r)),
                        Err(_) => out::line(&format!("? {l}")),
                    }
                }
            }
            Ok(())
        })
        .await?;
        return Ok(truncated_warning(paging));
    }

    let mut records = Vec::new();
    let mut parse_error = None;
    let paging = read_pages(args.from, fetch, |lines| {
        for l in lines.iter().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<AuditRecord>(l) {
                Ok(r) => records.push(r),
                Err(e) if parse_error.is_none() => {
                    let after = records.last().map_or(String::new(), |r: &AuditRecord| format!(" after seq {}", r.seq));
                    parse_error = Some(format!("record{after} is not an audit record: {e}"));
                }
                Err(_) => {}
            }
        }
        Ok(())
    })
    .await?;

    let result = match parse_error {
        Some(message) => Err(message),
        None => verify(&records, args.from).map_err(|e| e.to_string()),
    };
    let anchored = args.from == 1;
    if json {
        let mut v = serde_json::json!({"intact": result.is_ok(), "records": records.len(), "from": args.from,
            "anchored": anchored});
        if let Err(message) = &result {
            v["error"] = serde_json::json!({"name": names::CHAIN_BROKEN, "message": message});
        }
        out::json(&v);
    } else {
        if !anchored && !records.is_empty() {
            eprintln!(
                "otpatchctl: note: checking from record {}: the chain is anchored at that record's prev hash, \
                 records before it are not checked",
                args.from
            );
        }
        if let Err(message) = &result {
            out::error_line(&format!("otpatchctl: audit chain broken: {message}"));
        } else {
            let from = if anchored { String::new() } else { format!(" (from seq {})", args.from) };
            out::line(&format!("audit chain intact: {} records{from}", records.len()));
        }
    }
    if result.is_err() {
        return Ok(exit::CHAIN_BROKEN);
    }
    Ok(truncated_warning(paging))
}

fn truncated_warning(paging: Paging) -> u8 {
    match paging {
        Paging::Complete => exit::OK,
        Paging::Truncated => {
            eprintln!("otpatchctl: stopped after {MAX_PAGES} pages of {PAGE} records; use --from to read further");
            exit::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let r = AuditRecord::new(
                    seq,
                    "2026-12-01T01:00:00Z".into(),
                    "transition",
                    Some("w-1".into()),
                    None,
                    serde_json::json!({"to": "armed"}),
                    &prev,
                );
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    fn lines(records: &[AuditRecord]) -> Vec<String> {
        records.iter().map(|r| serde_json::to_string(r).expect("serializable")).collect()
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
    }

    /// A fake `GetAuditLog` over `all`, recording the calls.
    fn serve(all: &[String], calls: &RefCell<Vec<(u64, u32)>>, from: u64, max: u32) -> Vec<String> {
        calls.borrow_mut().push((from, max));
        all.iter().skip(from.saturating_sub(1) as usize).take(max as usize).cloned().collect()
    }

    #[test]
    fn pages_until_a_short_page() {
        let all = lines(&chain(1203));
        let calls = RefCell::new(Vec::new());
        let mut seen = 0;
        let paging = block_on(read_pages(
            1,
            |from, max| {
                let page = serve(&all, &calls, from, max);
                async move { Ok(page) }
            },
            |page| {
                seen += page.len();
                Ok(())
            },
        ))
        .expect("reads");
        assert_eq!(paging, Paging::Complete);
        assert_eq!(seen, 1203);
        assert_eq!(*calls.borrow(), vec![(1, 500), (501, 500), (1001, 500)]);
    }

    #[test]
    fn exact_multiple_ends_with_an_empty_page() {
        let all = lines(&chain(500));
        let calls = RefCell::new(Vec::new());
        block_on(read_pages(
            1,
            |from, max| {
                let page = serve(&all, &calls, from, max);
                async move { Ok(page) }
            },
            |_| Ok(()),
        ))
        .expect("reads");
        assert_eq!(*calls.borrow(), vec![(1, 500), (501, 500)]);
    }

    #[test]
    fn a_daemon_that_repeats_itself_is_stopped() {
        let all = lines(&chain(500));
        let n = RefCell::new(0);
        let err = block_on(read_pages(
            1,
            |_, _| {
                *n.borrow_mut() += 1;
                let page = all.clone();
                async move { Ok(page) }
            },
            |_| Ok(()),
        ))
        .expect_err("does not advance");
        assert_eq!(*n.borrow(), 2);
        assert!(err.message.contains("do not advance"), "{}", err.message);
    }

    #[test]
    fn errors_stop_the_paging() {
        let err =
            block_on(read_pages(1, |_, _| async { Err(CtlError::failed("boom")) }, |_| Ok(()))).expect_err("fails");
        assert_eq!(err.message, "boom");
    }

    #[test]
    fn verification_from_the_start_and_from_the_middle() {
        let c = chain(6);
        assert_eq!(verify(&c, 1), Ok(()));
        assert_eq!(verify(&c[2..], 3), Ok(()));
        assert_eq!(verify(&[], 1), Ok(()));
        // A log whose first record was removed does not verify from 1.
        assert_eq!(verify(&c[1..], 1), Err(ChainError::Sequence { seq: 2, expected: 1 }));
        let mut edited = c.clone();
        edited[3].kind = "operator".into();
        assert_eq!(verify(&edited, 1), Err(ChainError::Hash { seq: 4 }));
        assert_eq!(verify(&edited[4..], 5), Ok(()), "the edit lies before the checked part");
    }
}
