//! Native cost of ingest, in one thread: parse and validate NDJSON batches of 200 events (the
//! events `bench/ingest.lua` sends), then store them, batch by batch, in a fresh store. Prints
//! the time per event of each part. For profiling the collector's ingest path without HTTP:
//!
//!     valgrind --tool=callgrind target/release/examples/ingest_cost 100 v7
//!     target/release/examples/ingest_cost 2000 [v7|uuid]
//!
//! Request ids: sequential by default (`bench-7-123`); with `v7`, UUIDv7 as the filter makes
//! them, spread over a second as batches from many filters are; with `uuid`, in no order at all
//! (random ids, as older filters and other clients send), so that inserts land all over the
//! unique index.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tally::request_id::IdGen;
use tally_collector::store::Store;

const BATCH: usize = 200;

/// Spread `n` over 64 bits (a multiplicative hash): ids in no order, and jitter, repeatably.
fn spread(n: u64) -> u64 {
    n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29)
}

fn body(ids: &mut IdGen, batch: usize, uuid: bool, v7: bool) -> Vec<u8> {
    let mut out = String::with_capacity(BATCH * 700);
    for j in 1..=BATCH {
        let n = (batch * BATCH + j) as u64;
        let id = if v7 {
            // The filter's ids: 50 000 events/s from VMs that each flush up to 1 s late.
            ids.next_uuid(1_780_000_000_000 + n / 50 + spread(n) % 1000)
        } else if uuid {
            // Random ids: the time part in no order either.
            ids.next_uuid(spread(n) >> 16)
        } else {
            format!("bench-{batch}-{j}")
        };
        out.push_str(&format!(
            r#"{{"request_id":"{id}","timestamp":"2026-11-24T08:00:00.000Z","provider":"openai","api":"chat_completions","endpoint":"/v1/chat/completions","model_requested":"gpt-4o-mini","model_actual":"gpt-4o-mini-2024-07-18","status":200,"streaming":false,"latency_ms":{}.5,"ttfb_ms":40.0,"input_tokens":1200,"output_tokens":345,"cached_input_tokens":200,"cache_write_tokens":0,"reasoning_tokens":45,"token_source":"exact","cost_usd":0.000372,"error_category":null,"error_source":null,"team":"team-{}","app":"checkout","feature":"feature-{}","task":null,"session_id":null,"user":"user-{}","rule":null,"routed":false}}"#,
            50 + j,
            j % 8,
            j % 20,
            j % 500
        ));
        out.push('\n');
    }
    out.into_bytes()
}

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let batches: usize = args
        .next()
        .map(|a| a.parse().map_err(|e| format!("BATCHES: {e}")))
        .transpose()?
        .unwrap_or(500);
    let mode = args.next();
    let uuid = mode.as_deref() == Some("uuid");
    let v7 = mode.as_deref() == Some("v7");
    let dir = std::env::temp_dir().join(format!("tally-ingest-cost-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::open(&dir).map_err(|e| e.to_string())?;
    let key = store.create_org("bench", 0).map_err(|e| e.to_string())?;
    let org = store
        .org_for_key(&key)
        .map_err(|e| e.to_string())?
        .ok_or("org missing")?;
    let mut ids = IdGen::new(42);
    let bodies: Vec<Vec<u8>> = (0..batches).map(|b| body(&mut ids, b, uuid, v7)).collect();

    let (mut parsing, mut storing) = (Duration::ZERO, Duration::ZERO);
    for b in &bodies {
        let t = Instant::now();
        let batch = tally_collector::ingest::parse(b).map_err(|e| format!("{e:?}"))?;
        parsing += t.elapsed();
        let t = Instant::now();
        let (accepted, _, _) = store
            .insert_events(&org, Arc::new(batch), 0)
            .map_err(|e| e.to_string())?;
        storing += t.elapsed();
        if accepted != BATCH {
            return Err(format!("{accepted} of {BATCH} events stored"));
        }
    }
    let events = (batches * BATCH) as f64;
    println!(
        "{} events: parse {:.2} us/event, store {:.2} us/event ({})",
        events,
        parsing.as_secs_f64() * 1e6 / events,
        storing.as_secs_f64() * 1e6 / events,
        mode.as_deref().unwrap_or("sequential")
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
