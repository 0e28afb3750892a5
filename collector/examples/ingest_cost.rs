//! Native cost of ingest, in one thread: parse and validate NDJSON batches of 200 events (the
//! events `bench/ingest.lua` sends), then store them, batch by batch, in a fresh store. Prints
//! the time per event of each part. For profiling the collector's ingest path without HTTP:
//!
//!     valgrind --tool=callgrind target/release/examples/ingest_cost 100
//!     target/release/examples/ingest_cost 2000 [uuid]
//!
//! With `uuid`, request ids are random UUIDs (Envoy's `x-request-id`), so inserts land all over
//! the events table instead of at one end.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tally_collector::store::Store;

const BATCH: usize = 200;

/// A small deterministic generator (SplitMix64), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn body(rng: &mut Rng, batch: usize, uuid: bool, v7: bool) -> Vec<u8> {
    let mut out = String::with_capacity(BATCH * 700);
    for j in 1..=BATCH {
        let id = if v7 {
            // 50 000 events/s from VMs that each flush up to 1 s late.
            let ms = 1_780_000_000_000u64 + ((batch * BATCH + j) as u64) / 50 + rng.next() % 1000;
            let (a, b) = (rng.next(), rng.next());
            format!(
                "{:08x}-{:04x}-7{:03x}-a{:03x}-{:012x}",
                ms >> 16,
                ms & 0xffff,
                a & 0xfff,
                b >> 52,
                b & 0xffff_ffff_ffff
            )
        } else if uuid {
            let (a, b) = (rng.next(), rng.next());
            format!(
                "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
                a >> 32,
                (a >> 16) & 0xffff,
                a & 0xfff,
                b >> 52,
                b & 0xffff_ffff_ffff
            )
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
    let mut rng = Rng(42);
    let bodies: Vec<Vec<u8>> = (0..batches).map(|b| body(&mut rng, b, uuid, v7)).collect();

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
