//! Rollups: per-minute, per-hour and per-day aggregates of events, per dimension, kept up to
//! date at ingest (in the batch's transaction), and the queries that read them.
//!
//! A query over `[from, to)` reads day rows for the whole days inside the range, hour rows for
//! the whole hours left at its edges, and minute rows for the rest, so a summary over a month
//! touches at most about 30 + 46 + 118 rows per key, whatever the number of events. The total and
//! the low-cardinality dimensions (feature, model, provider, provider_model, error) are kept per
//! minute; the people-sized ones (team, app, task, user) and the mesh's (namespace, workload)
//! per hour and day only, and their ranges are answered at hour resolution (edges rounded down
//! to the hour).

use crate::db::{self, Backend, Conn};
use crate::sketch::{self, Sketch};
use crate::values;
use foldhash::HashMap;
use std::borrow::Cow;
use tally::event::{ErrorSource, Event};
use tally::pricing::PriceTable;

pub const MINUTE: i64 = 60_000;
pub const HOUR: i64 = 3_600_000;
pub const DAY: i64 = 86_400_000;

/// Dimensions kept per minute (the others, per hour and day).
pub const MINUTE_DIMENSIONS: [&str; 5] =
    ["feature", "model", "provider", "provider_model", "error"];

/// The finest granularity a dimension (`None`: the total) is kept at.
pub fn finest(dim: Option<&str>) -> i64 {
    match dim {
        None => MINUTE,
        Some(d) if MINUTE_DIMENSIONS.contains(&d) => MINUTE,
        Some(_) => HOUR,
    }
}

/// Dimensions a summary or time series can be grouped by. `provider_model` keys are
/// `provider/model`; `error` keys are `category/source`, for failed requests only.
pub const DIMENSIONS: [&str; 11] = [
    "feature",
    "model",
    "provider",
    "team",
    "app",
    "task",
    "user",
    "namespace",
    "workload",
    "provider_model",
    "error",
];

/// The key an event has in a dimension ("" for none; a request with no feature is `untagged`);
/// `None` when the event has no row in that dimension (a success, for `error`).
pub fn key_of<'e>(e: &'e Event, dim: &str) -> Option<Cow<'e, str>> {
    match dim {
        "status" => Some(Cow::Borrowed(status_class(e.status))),
        d => key_at(e, DIMENSIONS.iter().position(|x| *x == d)?),
    }
}

/// [`key_of`] the dimension `DIMENSIONS[i]` (counting an event into its rows finds its keys by
/// number: comparing names was a sixth of that work).
fn key_at(e: &Event, i: usize) -> Option<Cow<'_, str>> {
    const FEATURE: usize = position("feature");
    const MODEL: usize = position("model");
    const PROVIDER_MODEL: usize = position("provider_model");
    const ERROR: usize = position("error");
    const PROVIDER: usize = position("provider");
    const TEAM: usize = position("team");
    const APP: usize = position("app");
    const TASK: usize = position("task");
    const USER: usize = position("user");
    const NAMESPACE: usize = position("namespace");
    const WORKLOAD: usize = position("workload");
    let v = match i {
        FEATURE => e.feature.as_deref().or(Some("untagged")),
        MODEL => Some(model_of(e)),
        PROVIDER_MODEL => return Some(Cow::Owned(format!("{}/{}", e.provider, model_of(e)))),
        ERROR => {
            let c = e.error_category?;
            let s = e.error_source.map(ErrorSource::name).unwrap_or_default();
            return Some(Cow::Owned(format!("{}/{s}", c.name())));
        }
        PROVIDER => Some(e.provider.as_str()),
        TEAM => e.team.as_deref(),
        APP => e.app.as_deref(),
        TASK => e.task.as_deref(),
        USER => e.user.as_deref(),
        NAMESPACE => e.namespace.as_deref(),
        WORKLOAD => e.workload.as_deref(),
        _ => None,
    };
    Some(Cow::Borrowed(v.unwrap_or_default()))
}

/// Names compared when compiling: the hot paths work with the numbers.
const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// A dimension's place in [`DIMENSIONS`] (past the end for a name not there).
const fn position(dim: &str) -> usize {
    let mut i = 0;
    while i < DIMENSIONS.len() && !same(DIMENSIONS[i], dim) {
        i += 1;
    }
    i
}

/// The model a breakdown shows: the one that answered, else the one asked for.
pub fn model_of(e: &Event) -> &str {
    e.model().unwrap_or_default()
}

/// The key of a status in the `status` filter dimension: its class.
pub fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        _ => "",
    }
}

/// Filters a summary or time series is answered for from rollups (one at a time): each event is
/// also counted under its key in one of these, paired with its key in each of [`PAIR_GROUPS`].
/// `status` is kept by class (`5xx`). A filter on anything else, or on two of these, reads the
/// events themselves.
pub const FILTER_DIMENSIONS: [&str; 7] = [
    "team",
    "app",
    "feature",
    "model",
    "provider",
    "namespace",
    "status",
];

/// What a filtered summary can be grouped by from rollups ("all": the total).
pub const PAIR_GROUPS: [&str; 10] = [
    "all",
    "feature",
    "model",
    "provider",
    "provider_model",
    "team",
    "app",
    "namespace",
    "workload",
    "error",
];

/// Filters under which users are a pair group too (`team:user`), besides [`PAIR_GROUPS`]: a
/// team's spend by its users is the view a team asks for. Users are many (hundreds to thousands
/// an hour), and under every filter they would be more rows than events (26 000 an hour for
/// 14 000 events in `query_bench`); under the team, about as many as the `user` rows.
pub const USER_FILTERS: [&str; 1] = ["team"];

/// Whether the pair rows of a filter on `f` are kept grouped by `g`.
pub fn pair_kept(f: &str, g: &str) -> bool {
    FILTER_DIMENSIONS.contains(&f)
        && (PAIR_GROUPS.contains(&g) || (g == "user" && USER_FILTERS.contains(&f)))
}

/// Pair rows are kept per hour only: a month is 720 of them per key, still few to read, and
/// day rows would double what ingest writes.
pub const PAIR_GRANULARITY: i64 = HOUR;

/// The rollup dimension of the pair (filter `f` = `value`, grouped by `g`): the two names, then
/// the value after a unit separator (names never hold one, so no two pairs share a name).
pub fn pair_dim(f: &str, g: &str, value: &str) -> String {
    format!("{f}:{g}\u{1f}{value}")
}

/// Single dimensions by number: "all", then [`DIMENSIONS`], then "status" (filters only).
const SINGLE: usize = 2 + DIMENSIONS.len();
fn single_name(d: usize) -> &'static str {
    match d {
        0 => "all",
        d if d <= DIMENSIONS.len() => DIMENSIONS[d - 1],
        _ => "status",
    }
}
const fn single_number(dim: &str) -> usize {
    if same(dim, "status") {
        SINGLE - 1
    } else if same(dim, "all") || position(dim) == DIMENSIONS.len() {
        0
    } else {
        position(dim) + 1
    }
}

const fn single_numbers<const N: usize>(dims: [&str; N]) -> [usize; N] {
    let mut out = [0; N];
    let mut i = 0;
    while i < N {
        out[i] = single_number(dims[i]);
        i += 1;
    }
    out
}

/// [`FILTER_DIMENSIONS`] and [`PAIR_GROUPS`] as single dimension numbers.
const FILTER_NUMBERS: [usize; FILTER_DIMENSIONS.len()] = single_numbers(FILTER_DIMENSIONS);
const GROUP_NUMBERS: [usize; PAIR_GROUPS.len()] = single_numbers(PAIR_GROUPS);
const USER_FILTER_NUMBERS: [usize; USER_FILTERS.len()] = single_numbers(USER_FILTERS);
const MODEL_NUMBER: usize = single_number("model");
const USER_NUMBER: usize = single_number("user");
/// Pairs by number: those of [`PAIR_GROUPS`] first, then users under [`USER_FILTERS`].
const GROUP_PAIRS: usize = FILTER_DIMENSIONS.len() * PAIR_GROUPS.len();
const STATUS_NUMBER: usize = SINGLE - 1;

/// Whether each single dimension is kept per minute (the total is; `status` is a filter only).
const PER_MINUTE: [bool; SINGLE] = {
    let mut out = [false; SINGLE];
    out[0] = true;
    let mut i = 0;
    while i < MINUTE_DIMENSIONS.len() {
        out[single_number(MINUTE_DIMENSIONS[i])] = true;
        i += 1;
    }
    out
};

/// One rollup row's figures.
#[derive(Debug, Clone, Default)]
pub struct Agg {
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Of the priced requests only.
    pub cost_usd: f64,
    /// Requests whose model has no known price (their cost is unknown, not 0), and their tokens.
    pub unpriced_requests: u64,
    pub unpriced_input_tokens: u64,
    pub unpriced_output_tokens: u64,
    pub cached_input_tokens: u64,
    /// What cached input saved at list price: (input rate - cache-read rate) x cached tokens.
    pub cache_savings_usd: f64,
    pub latency_sum_ms: f64,
    pub latency: Sketch,
    pub ttfb: Sketch,
}

impl Agg {
    /// Add another row's figures.
    pub(crate) fn merge(&mut self, o: &Agg) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cost_usd += o.cost_usd;
        self.unpriced_requests += o.unpriced_requests;
        self.unpriced_input_tokens += o.unpriced_input_tokens;
        self.unpriced_output_tokens += o.unpriced_output_tokens;
        self.cached_input_tokens += o.cached_input_tokens;
        self.cache_savings_usd += o.cache_savings_usd;
        self.latency_sum_ms += o.latency_sum_ms;
        self.latency.merge(&o.latency);
        self.ttfb.merge(&o.ttfb);
    }

    /// Count an event in; `latency` and `ttfb` are its sketch buckets, and `savings` what its
    /// cached tokens saved, found once per event.
    pub fn add(&mut self, e: &Event, latency: i32, ttfb: Option<i32>, savings: f64) {
        self.requests += 1;
        if e.error_category.is_some() {
            self.errors += 1;
        }
        let (input, output) = (e.input_tokens.unwrap_or(0), e.output_tokens.unwrap_or(0));
        self.input_tokens += input;
        self.output_tokens += output;
        match e.cost_usd {
            Some(c) => self.cost_usd += c,
            None => {
                self.unpriced_requests += 1;
                self.unpriced_input_tokens += input;
                self.unpriced_output_tokens += output;
            }
        }
        self.cached_input_tokens += e.cached_input_tokens.unwrap_or(0);
        self.cache_savings_usd += savings;
        self.latency_sum_ms += e.latency_ms;
        self.latency.add_bucket(latency);
        if let Some(t) = ttfb {
            self.ttfb.add_bucket(t);
        }
    }

    /// Count an event in, finding its sketch buckets.
    pub fn add_event(&mut self, e: &Event, savings: f64) {
        let ttfb = e.ttfb_ms.map(sketch::bucket);
        self.add(e, sketch::bucket(e.latency_ms), ttfb, savings);
    }

    /// The cost of the priced requests, `None` when there were requests and none was priced.
    pub fn known_cost(&self) -> Option<f64> {
        (self.requests == 0 || self.unpriced_requests < self.requests).then_some(self.cost_usd)
    }
}

/// A rollup row's identity in a [`Pending`]: a single dimension's key, or a pair of keys (the
/// filter's and the group's, by their own numbers), so that an event's pair rows are found by
/// hashing integers and no pair name is built until the rows are written.
enum RowKey {
    Single { d: u8, key: String },
    Pair { p: u8, f: u32, g: u32 },
}

/// Pairs by number: below [`GROUP_PAIRS`], filter `FILTER_DIMENSIONS[p / PAIR_GROUPS.len()]`
/// and group `PAIR_GROUPS[p % PAIR_GROUPS.len()]`; then users under `USER_FILTERS[p -
/// GROUP_PAIRS]`.
fn pair_names(p: u8) -> (&'static str, &'static str) {
    let (p, n) = (p as usize, PAIR_GROUPS.len());
    match p.checked_sub(GROUP_PAIRS) {
        None => (FILTER_DIMENSIONS[p / n], PAIR_GROUPS[p % n]),
        Some(u) => (USER_FILTERS[u], "user"),
    }
}

/// An event's keys, by number: in each single dimension ([`NO_KEY`] where it has no row), then
/// the model it asked for when another answered. Events with the same keys in the same minute
/// add into the same rows, so they are counted together first (see [`Pending::add`]).
type Combo = [u32; SINGLE + 1];
const NO_KEY: u32 = u32::MAX;
const REQUESTED: usize = SINGLE;

/// Rollup rows touched by a batch. Each (dimension, key) pair gets a number once per batch, so
/// an event's rows are found by hashing integers, not strings, and its labels are not copied.
/// The maps hash with foldhash: SipHash was half the cost of counting an event in.
#[derive(Default)]
pub struct Pending {
    /// Per single dimension (see [`single_name`]): key -> number.
    ids: [HashMap<String, u32>; SINGLE],
    /// (pair, filter key's number, group key's number) -> number.
    pair_ids: HashMap<(u8, u32, u32), u32>,
    /// Number -> row identity.
    keys: Vec<RowKey>,
    /// (granularity, bucket, number) -> figures.
    rows: HashMap<(i64, i64, u32), Agg>,
    /// Events counted but not yet into `rows`: (minute, their keys) -> figures. An event is in
    /// about a hundred rows, and adding it into each was most of the collector's CPU at ingest;
    /// events sharing every key in a minute (one service calling one model for one user) add
    /// into one figure here, which goes into the rows once (see [`Pending::settle`]).
    combos: HashMap<(i64, Combo), Agg>,
    /// Prices of the batch's models, for what their cache reads saved.
    pricer: tally::pricing::Pricer,
    /// Only the users under the team filter are counted (a migration's count of them).
    users_under_teams_only: bool,
}

impl Pending {
    /// A `Pending` that counts the users under the team filter only, for the migration that
    /// added them (SQLite's 16, PostgreSQL's 3): it counts every stored event, and counting each
    /// into all its rows took it 80 µs per event.
    pub fn users_under_teams() -> Pending {
        Pending {
            users_under_teams_only: true,
            ..Default::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.combos.is_empty()
    }

    /// How many figures are held (rows and events not yet in them).
    pub fn len(&self) -> usize {
        self.rows.len() + self.combos.len()
    }

    /// Add another `Pending`'s rows, and events not yet in rows, into these.
    pub fn merge(&mut self, other: &Pending) {
        let mine = self.translation(other);
        for (&(g, bucket, id), agg) in &other.rows {
            if let Some(Some(id)) = mine.get(id as usize) {
                self.rows.entry((g, bucket, *id)).or_default().merge(agg);
            }
        }
        'combos: for ((minute, combo), agg) in &other.combos {
            let mut here = [NO_KEY; SINGLE + 1];
            for (to, &from) in here.iter_mut().zip(combo) {
                if from != NO_KEY {
                    match mine.get(from as usize) {
                        Some(Some(id)) => *to = *id,
                        _ => continue 'combos,
                    }
                }
            }
            self.combos.entry((*minute, here)).or_default().merge(agg);
        }
    }

    /// The number in these rows of each of `other`'s (made here where new). Each is translated
    /// once, not once per row that uses it (a key is in dozens of pair rows); a pair's keys are
    /// numbered before it, so one pass in order.
    fn translation(&mut self, other: &Pending) -> Vec<Option<u32>> {
        let mut mine: Vec<Option<u32>> = Vec::with_capacity(other.keys.len());
        for k in &other.keys {
            let id = match k {
                RowKey::Single { d, key } => Some(self.id(*d as usize, key)),
                RowKey::Pair { p, f, g } => {
                    match (
                        mine.get(*f as usize).copied().flatten(),
                        mine.get(*g as usize).copied().flatten(),
                    ) {
                        (Some(f), Some(g)) => Some(self.pair_id(*p, f, g)),
                        _ => None,
                    }
                }
            };
            mine.push(id);
        }
        mine
    }

    fn id(&mut self, d: usize, key: &str) -> u32 {
        if let Some(&id) = self.ids[d].get(key) {
            return id;
        }
        let id = self.keys.len() as u32;
        self.keys.push(RowKey::Single {
            d: d as u8,
            key: key.to_string(),
        });
        self.ids[d].insert(key.to_string(), id);
        id
    }

    fn is_empty_key(&self, id: u32) -> bool {
        matches!(self.keys.get(id as usize), Some(RowKey::Single { key, .. }) if key.is_empty())
    }

    fn pair_id(&mut self, p: u8, f: u32, g: u32) -> u32 {
        if let Some(&id) = self.pair_ids.get(&(p, f, g)) {
            return id;
        }
        let id = self.keys.len() as u32;
        self.keys.push(RowKey::Pair { p, f, g });
        self.pair_ids.insert((p, f, g), id);
        id
    }

    /// Count a newly stored event (ts in Unix ms) in: with the events of its minute that have
    /// all its keys, and into its rows when these are written (see [`Pending::settle`]).
    pub fn add(&mut self, prices: &PriceTable, e: &Event, ts: i64) {
        let latency = sketch::bucket(e.latency_ms);
        let ttfb = e.ttfb_ms.map(sketch::bucket);
        let savings = self.pricer.cache_savings_usd(prices, e);
        let mut combo = [NO_KEY; SINGLE + 1];
        combo[0] = self.id(0, "");
        for d in 0..DIMENSIONS.len() {
            if let Some(key) = key_at(e, d) {
                combo[d + 1] = self.id(d + 1, &key);
            }
        }
        combo[STATUS_NUMBER] = self.id(STATUS_NUMBER, status_class(e.status));
        if let Some(m) = e.model_requested.as_deref().filter(|m| *m != model_of(e)) {
            combo[REQUESTED] = self.id(MODEL_NUMBER, m);
        }
        self.combos
            .entry((ts.div_euclid(MINUTE) * MINUTE, combo))
            .or_default()
            .add(e, latency, ttfb, savings);
    }

    /// Move the events counted by [`Pending::add`] into their rows. In the order of their
    /// (minute, keys), so that two `Pending`s of the same events number their rows alike
    /// (see [`Pending::write_price_change`]).
    pub fn settle(&mut self) {
        if self.combos.is_empty() {
            return;
        }
        let mut combos: Vec<((i64, Combo), Agg)> = self.combos.drain().collect();
        combos.sort_unstable_by_key(|c| c.0);
        for ((minute, combo), agg) in combos {
            self.count(minute, &combo, &agg);
        }
    }

    /// Add the figures of events sharing `combo` in `minute` into every row they belong to.
    fn count(&mut self, minute: i64, combo: &Combo, agg: &Agg) {
        let mine: [Option<u32>; SINGLE] =
            std::array::from_fn(|d| Some(combo[d]).filter(|&k| k != NO_KEY));
        let requested = Some(combo[REQUESTED]).filter(|&k| k != NO_KEY);
        let all = !self.users_under_teams_only;
        // Pair rows, per hour: the events under each filter key they match (a model filter
        // matches the model asked for as well as the one that answered). A missing label has
        // no filter key: the API takes no empty filter.
        let mut pairs = [0u32; 2 * GROUP_PAIRS + USER_FILTERS.len()];
        let mut npairs = 0;
        for (fi, &fd) in FILTER_NUMBERS.iter().enumerate().filter(|_| all) {
            let also = if fd == MODEL_NUMBER { requested } else { None };
            for fkey in [mine[fd], also].into_iter().flatten() {
                if self.is_empty_key(fkey) {
                    continue;
                }
                for (gi, &gd) in GROUP_NUMBERS.iter().enumerate() {
                    // A filter's own dimension is its total (`f:all`), but for the model: the
                    // model asked for may be answered by another.
                    if gd == fd && fd != MODEL_NUMBER {
                        continue;
                    }
                    if let Some(gkey) = mine[gd] {
                        let p = (fi * PAIR_GROUPS.len() + gi) as u8;
                        pairs[npairs] = self.pair_id(p, fkey, gkey);
                        npairs += 1;
                    }
                }
            }
        }
        if let Some(user) = mine[USER_NUMBER] {
            for (ui, &fd) in USER_FILTER_NUMBERS.iter().enumerate() {
                if let Some(fkey) = mine[fd].filter(|&k| !self.is_empty_key(k)) {
                    pairs[npairs] = self.pair_id((GROUP_PAIRS + ui) as u8, fkey, user);
                    npairs += 1;
                }
            }
        }
        // Each single dimension at the finest it is kept at (not `status`: a filter only); its
        // coarser rows come from these when written (see [`Pending::all_rows`]).
        for (d, id) in mine[..STATUS_NUMBER].iter().enumerate().filter(|_| all) {
            if let Some(id) = *id {
                let g = if PER_MINUTE[d] { MINUTE } else { HOUR };
                self.rows
                    .entry((g, minute.div_euclid(g) * g, id))
                    .or_default()
                    .merge(agg);
            }
        }
        let bucket = minute.div_euclid(PAIR_GRANULARITY) * PAIR_GRANULARITY;
        for &id in &pairs[..npairs] {
            self.rows
                .entry((PAIR_GRANULARITY, bucket, id))
                .or_default()
                .merge(agg);
        }
    }

    /// Every row: those counted, and the coarser rows of the single dimensions (hour rows of
    /// those counted per minute, day rows of all). Events are counted into the finest rows
    /// only, and the coarser ones are found per row when the rows are written, not per event:
    /// a fifth fewer rows to count each event into. (Pair rows are kept per hour only.)
    fn all_rows(&self) -> AllRows<'_> {
        debug_assert!(self.combos.is_empty(), "rows read before settle");
        let mut coarse: HashMap<(i64, i64, u32), Agg> = HashMap::default();
        for (&(g, bucket, id), agg) in &self.rows {
            if g == MINUTE {
                coarse
                    .entry((HOUR, bucket.div_euclid(HOUR) * HOUR, id))
                    .or_default()
                    .merge(agg);
            }
        }
        let mut days: HashMap<(i64, i64, u32), Agg> = HashMap::default();
        for (&(g, bucket, id), agg) in self.rows.iter().chain(&coarse) {
            let single = matches!(self.keys.get(id as usize), Some(RowKey::Single { .. }));
            if g == HOUR && single {
                days.entry((DAY, bucket.div_euclid(DAY) * DAY, id))
                    .or_default()
                    .merge(agg);
            }
        }
        coarse.extend(days);
        AllRows {
            counted: &self.rows,
            coarse,
        }
    }

    /// A row's (dimension, key) as stored.
    fn names(&self, id: u32) -> Option<(Cow<'static, str>, &str)> {
        match self.keys.get(id as usize)? {
            RowKey::Single { d, key } => Some((Cow::Borrowed(single_name(*d as usize)), key)),
            RowKey::Pair { p, f, g } => {
                let (fname, gname) = pair_names(*p);
                let fkey = match self.keys.get(*f as usize)? {
                    RowKey::Single { key, .. } => key,
                    RowKey::Pair { .. } => return None,
                };
                let gkey = match self.keys.get(*g as usize)? {
                    RowKey::Single { key, .. } => key.as_str(),
                    RowKey::Pair { .. } => return None,
                };
                Some((Cow::Owned(pair_dim(fname, gname, fkey)), gkey))
            }
        }
    }

    /// Merge the batch's figures into the stored rows: one upsert per row. On SQLite, sketches
    /// are merged by the `sketch_merge` SQL function (see [`register`]). On PostgreSQL each
    /// replica adds into rows of its own (`replica`), which only it writes, so sketches are
    /// merged here and the row replaced: replicas never merge a sketch in the database, and
    /// reads add the replicas' rows up as they add buckets up.
    pub fn write(&mut self, tx: &mut Conn, org_id: i64, replica: &str) -> db::Result<()> {
        self.settle();
        if tx.backend() == Backend::Postgres {
            return self.write_replica_rows(tx, org_id, replica, Stored::Read(None), None);
        }
        for (&(g, bucket, id), agg) in self.all_rows().iter() {
            let Some((dim, key)) = self.names(id) else {
                continue;
            };
            let sketches = (agg.latency.to_bytes(), agg.ttfb.to_bytes());
            tx.execute(
                WRITE_SQLITE,
                &row_values(org_id, (g, bucket, &dim, key), agg, sketches),
            )?;
        }
        Ok(())
    }

    /// [`Pending::write`] for the replica's own waiting rows, with `known`: the sketches of rows
    /// it wrote lately, as committed, so that those are not read again. Returns the sketches
    /// as written, for `known` once the transaction commits.
    pub fn write_own(
        &mut self,
        tx: &mut Conn,
        org_id: i64,
        replica: &str,
        known: &Sketches,
    ) -> db::Result<Vec<(SketchKey, (Sketch, Sketch))>> {
        self.settle();
        if tx.backend() == Backend::Sqlite {
            self.write(tx, org_id, replica)?;
            return Ok(Vec::new());
        }
        let mut written = Vec::new();
        let stored = Stored::Read(Some(known));
        self.write_replica_rows(tx, org_id, replica, stored, Some(&mut written))?;
        Ok(written)
    }

    /// [`Pending::write`] on PostgreSQL, by the hundred rows per statement: the replica's rows'
    /// sketches are read (unless `cache` knows them), merged here, and written back with the
    /// figures added.
    fn write_replica_rows(
        &self,
        tx: &mut Conn,
        org_id: i64,
        replica: &str,
        stored_rows: Stored<'_>,
        mut written: Option<&mut Vec<(SketchKey, (Sketch, Sketch))>>,
    ) -> db::Result<()> {
        let (cache, none) = match stored_rows {
            Stored::Read(cache) => (cache, false),
            Stored::None => (None, true),
        };
        let all = self.all_rows();
        let mut rows: Vec<_> = all
            .iter()
            .filter_map(|(&(g, bucket, id), agg)| {
                self.names(id).map(|(dim, key)| (g, bucket, dim, key, agg))
            })
            .collect();
        // In the primary key's order: rows written together then sit together in the table,
        // so that a summary reads a dimension's rows from a few pages, not a page per row. In
        // the map's order the 14 400 user rows of a month at 1 M events read 16 700 pages, and
        // the summary by user took 77 ms; in order, 36 ms.
        rows.sort_unstable_by(|a, b| (a.0, &a.2, a.1, a.3).cmp(&(b.0, &b.2, b.1, b.3)));
        let mut at = 0;
        while at < rows.len() {
            let n = chunk(rows.len() - at, WRITE_ROWS);
            let part = &rows[at..at + n];
            at += n;
            // The stored sketches of these rows, by (granularity, bucket, dimension, key): those
            // the cache does not know, read.
            let known = |g: i64, bucket: i64, dim: &str, key: &str| {
                cache.and_then(|k| {
                    k.rows
                        .get(&(org_id, g, bucket, dim.to_string(), key.to_string()))
                        .cloned()
                })
            };
            let unknown: Vec<_> = part
                .iter()
                .filter(|(g, bucket, dim, key, _)| !none && known(*g, *bucket, dim, key).is_none())
                .collect();
            let mut keys = values![org_id, replica].to_vec();
            for (g, bucket, dim, key, _) in &unknown {
                keys.extend([
                    (*g).into(),
                    (*bucket).into(),
                    dim.as_ref().into(),
                    (*key).into(),
                ]);
            }
            let mut stored: HashMap<(i64, i64, String, String), (Sketch, Sketch)> =
                HashMap::default();
            if !unknown.is_empty() {
                tx.query_each(&read_sketches_sql(unknown.len()), &keys, |r| {
                    let mut latency = Sketch::default();
                    latency.merge_bytes(r.blob(4)?);
                    let mut ttfb = Sketch::default();
                    ttfb.merge_bytes(r.blob(5)?);
                    stored.insert(
                        (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?),
                        (latency, ttfb),
                    );
                    Ok(())
                })?;
            }
            let mut values = Vec::with_capacity(n * WRITE_COLUMNS);
            for (g, bucket, dim, key, agg) in part {
                let (mut latency, mut ttfb) = (agg.latency.clone(), agg.ttfb.clone());
                let before = known(*g, *bucket, dim, key)
                    .or_else(|| stored.remove(&(*g, *bucket, dim.to_string(), key.to_string())));
                if let Some((l, t)) = before {
                    latency.merge(&l);
                    ttfb.merge(&t);
                }
                if let Some(written) = written.as_mut() {
                    let k = (org_id, *g, *bucket, dim.to_string(), key.to_string());
                    written.push((k, (latency.clone(), ttfb.clone())));
                }
                let sketches = (latency.to_bytes(), ttfb.to_bytes());
                values.extend(row_values(org_id, (*g, *bucket, dim, key), agg, sketches));
                values.push(replica.into());
            }
            tx.execute(&write_rows_sql(n), &values)?;
        }
        Ok(())
    }

    /// For a repricing: add to the stored rows what changed from `before` (the same events,
    /// counted in the same order, with their former costs) to these rows: cost, unpriced
    /// counts and savings (the other figures do not depend on the price).
    pub fn write_price_change(
        &mut self,
        tx: &mut Conn,
        org_id: i64,
        before: &mut Pending,
        replica: &str,
    ) -> db::Result<()> {
        self.settle();
        before.settle();
        let empty = Agg::default();
        let was_rows = before.all_rows();
        for (&(g, bucket, id), now) in self.all_rows().iter() {
            let Some((dim, key)) = self.names(id) else {
                continue;
            };
            // Built from the same events in the same order, both number their rows alike.
            let was = was_rows.get(&(g, bucket, id)).unwrap_or(&empty);
            let signed = |a: u64, b: u64| a as i64 - b as i64;
            let change = Figures {
                cost_usd: now.cost_usd - was.cost_usd,
                unpriced_requests: signed(now.unpriced_requests, was.unpriced_requests),
                unpriced_input_tokens: signed(now.unpriced_input_tokens, was.unpriced_input_tokens),
                unpriced_output_tokens: signed(
                    now.unpriced_output_tokens,
                    was.unpriced_output_tokens,
                ),
                cached_input_tokens: 0,
                cache_savings_usd: now.cache_savings_usd - was.cache_savings_usd,
            };
            add_figures(tx, org_id, (g, bucket, &dim, key), &change, replica)?;
        }
        Ok(())
    }

    /// The rows as a database before migration 9 held them (single dimensions, the figures
    /// of then), for the migration tests.
    #[cfg(test)]
    pub fn write_before_v9(&mut self, tx: &mut Conn, org_id: i64) -> db::Result<()> {
        self.settle();
        for (&(g, bucket, id), agg) in self.all_rows().iter() {
            let Some(RowKey::Single { d, key }) = self.keys.get(id as usize) else {
                continue;
            };
            if single_name(*d as usize) == "status" {
                continue;
            }
            tx.execute(
                "INSERT INTO rollups (org_id, granularity_ms, bucket_ms, dim, key, requests,
                    errors, input_tokens, output_tokens, cost_usd, latency_sum_ms, latency, ttfb)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                values![
                    org_id,
                    g,
                    bucket,
                    single_name(*d as usize),
                    key.as_str(),
                    agg.requests,
                    agg.errors,
                    agg.input_tokens,
                    agg.output_tokens,
                    agg.cost_usd,
                    agg.latency_sum_ms,
                    agg.latency.to_bytes(),
                    agg.ttfb.to_bytes(),
                ],
            )?;
        }
        Ok(())
    }

    /// For the migration that added the unpriced, cached and pair figures (SQLite's; a
    /// PostgreSQL database starts at today's schema): write the pair rows whole, and only those
    /// new figures into the single-dimension rows, which already count everything else.
    pub fn write_new_figures(&mut self, tx: &mut Conn, org_id: i64) -> db::Result<()> {
        self.settle();
        for (&(g, bucket, id), agg) in self.all_rows().iter() {
            match self.keys.get(id as usize) {
                Some(RowKey::Pair { .. }) | None => {}
                Some(RowKey::Single { .. }) => {
                    let Some((dim, key)) = self.names(id) else {
                        continue;
                    };
                    let new = Figures {
                        cost_usd: 0.0,
                        unpriced_requests: agg.unpriced_requests as i64,
                        unpriced_input_tokens: agg.unpriced_input_tokens as i64,
                        unpriced_output_tokens: agg.unpriced_output_tokens as i64,
                        cached_input_tokens: agg.cached_input_tokens as i64,
                        cache_savings_usd: agg.cache_savings_usd,
                    };
                    add_figures(tx, org_id, (g, bucket, &dim, key), &new, "")?;
                }
            }
        }
        self.pair_rows().write(tx, org_id, "")
    }

    /// Write rows the database does not hold yet (a migration's new dimension): on PostgreSQL
    /// no stored sketch is read first, since there is none.
    pub fn write_new(&mut self, tx: &mut Conn, org_id: i64, replica: &str) -> db::Result<()> {
        if tx.backend() == Backend::Sqlite {
            return self.write(tx, org_id, replica);
        }
        self.settle();
        self.write_replica_rows(tx, org_id, replica, Stored::None, None)
    }

    /// These rows' pair rows.
    fn pair_rows(&self) -> Pending {
        let mut pairs = Pending::default();
        let translated = pairs.translation(self);
        for (&(g, bucket, id), agg) in &self.rows {
            if let (Some(RowKey::Pair { .. }), Some(&Some(mine))) =
                (self.keys.get(id as usize), translated.get(id as usize))
            {
                pairs.rows.insert((g, bucket, mine), agg.clone());
            }
        }
        pairs
    }
}

/// What [`Pending::write_replica_rows`] knows of the rows' stored sketches.
enum Stored<'a> {
    /// Read those the cache (if any) does not know.
    Read(Option<&'a Sketches>),
    /// There are none: the rows are new.
    None,
}

/// A [`Pending`]'s rows as written: those counted, and the coarser ones found from them.
struct AllRows<'p> {
    counted: &'p HashMap<(i64, i64, u32), Agg>,
    coarse: HashMap<(i64, i64, u32), Agg>,
}

impl AllRows<'_> {
    fn iter(&self) -> impl Iterator<Item = (&(i64, i64, u32), &Agg)> {
        self.counted.iter().chain(&self.coarse)
    }

    fn get(&self, row: &(i64, i64, u32)) -> Option<&Agg> {
        self.counted.get(row).or_else(|| self.coarse.get(row))
    }
}

/// Amounts added to a stored row's additive figures (negative: taken away).
struct Figures {
    cost_usd: f64,
    unpriced_requests: i64,
    unpriced_input_tokens: i64,
    unpriced_output_tokens: i64,
    cached_input_tokens: i64,
    cache_savings_usd: f64,
}

/// Add `f` to the row (granularity, bucket, dimension, key) of an org, if it exists. On
/// PostgreSQL, to this replica's row of it (made if it has none): the replicas' rows are added
/// up when read, so the change counts once whichever replica's row holds it.
fn add_figures(
    tx: &mut Conn,
    org_id: i64,
    (g, bucket, dim, key): (i64, i64, &str, &str),
    f: &Figures,
    replica: &str,
) -> db::Result<()> {
    let figures = values![
        org_id,
        g,
        bucket,
        dim,
        key,
        f.cost_usd,
        f.unpriced_requests,
        f.unpriced_input_tokens,
        f.unpriced_output_tokens,
        f.cached_input_tokens,
        f.cache_savings_usd,
        replica,
    ];
    match tx.backend() {
        Backend::Sqlite => tx.execute(
            "UPDATE rollups SET cost_usd = cost_usd + ?6,
                unpriced_requests = unpriced_requests + ?7,
                unpriced_input_tokens = unpriced_input_tokens + ?8,
                unpriced_output_tokens = unpriced_output_tokens + ?9,
                cached_input_tokens = cached_input_tokens + ?10,
                cache_savings_usd = cache_savings_usd + ?11
             WHERE org_id = ?1 AND granularity_ms = ?2 AND bucket_ms = ?3 AND dim = ?4
                AND key = ?5",
            &figures[..11],
        )?,
        Backend::Postgres => tx.execute(
            "INSERT INTO rollups (org_id, granularity_ms, bucket_ms, dim, key, replica, requests,
                errors, input_tokens, output_tokens, cost_usd, latency_sum_ms, latency, ttfb,
                unpriced_requests, unpriced_input_tokens, unpriced_output_tokens,
                cached_input_tokens, cache_savings_usd)
             SELECT ?1, ?2, ?3, ?4, ?5, ?12, 0, 0, 0, 0, ?6, 0, ?13, ?13, ?7, ?8, ?9, ?10, ?11
             WHERE EXISTS (SELECT 1 FROM rollups WHERE org_id = ?1 AND granularity_ms = ?2
                AND dim = ?4 AND bucket_ms = ?3 AND key = ?5)
             ON CONFLICT (org_id, granularity_ms, dim, bucket_ms, key, replica) DO UPDATE SET
                cost_usd = rollups.cost_usd + excluded.cost_usd,
                unpriced_requests = rollups.unpriced_requests + excluded.unpriced_requests,
                unpriced_input_tokens =
                    rollups.unpriced_input_tokens + excluded.unpriced_input_tokens,
                unpriced_output_tokens =
                    rollups.unpriced_output_tokens + excluded.unpriced_output_tokens,
                cached_input_tokens = rollups.cached_input_tokens + excluded.cached_input_tokens,
                cache_savings_usd = rollups.cache_savings_usd + excluded.cache_savings_usd",
            &[figures, values![Sketch::default().to_bytes()]].concat(),
        )?,
    };
    Ok(())
}

/// The upsert of a rollup row on SQLite (one writer: the sketches merge in the statement).
const WRITE_SQLITE: &str = "INSERT INTO rollups (org_id, granularity_ms, bucket_ms, dim, key,
        requests, errors, input_tokens, output_tokens, cost_usd, latency_sum_ms, latency, ttfb,
        unpriced_requests, unpriced_input_tokens, unpriced_output_tokens, cached_input_tokens,
        cache_savings_usd)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
     ON CONFLICT (org_id, granularity_ms, dim, key, bucket_ms) DO UPDATE SET
        requests = requests + excluded.requests,
        errors = errors + excluded.errors,
        input_tokens = input_tokens + excluded.input_tokens,
        output_tokens = output_tokens + excluded.output_tokens,
        cost_usd = cost_usd + excluded.cost_usd,
        latency_sum_ms = latency_sum_ms + excluded.latency_sum_ms,
        latency = sketch_merge(latency, excluded.latency),
        ttfb = sketch_merge(ttfb, excluded.ttfb),
        unpriced_requests = unpriced_requests + excluded.unpriced_requests,
        unpriced_input_tokens = unpriced_input_tokens + excluded.unpriced_input_tokens,
        unpriced_output_tokens = unpriced_output_tokens + excluded.unpriced_output_tokens,
        cached_input_tokens = cached_input_tokens + excluded.cached_input_tokens,
        cache_savings_usd = cache_savings_usd + excluded.cache_savings_usd";

/// A row's values in the order of [`WRITE_SQLITE`]'s columns (and, with the replica after them,
/// of [`write_rows_sql`]'s), its sketches given as stored.
fn row_values(
    org_id: i64,
    (g, bucket, dim, key): (i64, i64, &str, &str),
    agg: &Agg,
    (latency, ttfb): (Vec<u8>, Vec<u8>),
) -> [db::Value; 18] {
    use db::Value;
    [
        Value::from(org_id),
        Value::from(g),
        Value::from(bucket),
        Value::from(dim),
        Value::from(key),
        Value::from(agg.requests),
        Value::from(agg.errors),
        Value::from(agg.input_tokens),
        Value::from(agg.output_tokens),
        Value::from(agg.cost_usd),
        Value::from(agg.latency_sum_ms),
        Value::from(latency),
        Value::from(ttfb),
        Value::from(agg.unpriced_requests),
        Value::from(agg.unpriced_input_tokens),
        Value::from(agg.unpriced_output_tokens),
        Value::from(agg.cached_input_tokens),
        Value::from(agg.cache_savings_usd),
    ]
}

/// A rollup row of a replica: (org, granularity, bucket, dimension, key).
pub type SketchKey = (i64, i64, i64, String, String);

/// The latency and TTFB sketches of the rollup rows a replica wrote lately, as committed
/// (PostgreSQL): the replica is the only writer of its rows, so what it wrote last is what they
/// hold, and its next write of a row need not read it first. Bounded; emptied whenever the rows
/// may have changed otherwise (a recount, retention, a connection made again).
#[derive(Default)]
pub struct Sketches {
    rows: HashMap<SketchKey, (Sketch, Sketch)>,
}

/// Rows [`Sketches`] holds at most (each a few hundred bytes): about the rows a busy hour
/// touches; past it, it starts again.
const SKETCHES_MAX: usize = 50_000;

impl Sketches {
    /// Keep `written` (committed).
    pub fn keep(&mut self, written: Vec<(SketchKey, (Sketch, Sketch))>) {
        if self.rows.len() + written.len() > SKETCHES_MAX {
            self.rows.clear();
        }
        self.rows.extend(written);
    }

    pub fn clear(&mut self) {
        self.rows.clear();
    }
}

/// Rollup rows per statement on PostgreSQL, at most.
const WRITE_ROWS: usize = 128;

/// The columns of a rollup row as written on PostgreSQL.
const WRITE_COLUMNS: usize = 19;

/// How many of `left` items the next statement takes: `max`, the largest multiple of 8 up to
/// `left`, or under 8 a power of two, so that a few statements, kept prepared, serve every
/// count.
pub(crate) fn chunk(left: usize, max: usize) -> usize {
    if left >= max {
        max
    } else if left >= 8 {
        // A multiple of 8: at most max / 8 statements, and a batch of the filter's usual
        // sizes in one.
        left - left % 8
    } else {
        1 << (usize::BITS - 1 - left.leading_zeros())
    }
}

/// `(?a, ?b, ...), (...)`: `rows` groups of `columns` numbered placeholders from `?first`.
pub(crate) fn placeholder_rows(first: usize, rows: usize, columns: usize) -> String {
    let mut sql = String::with_capacity(rows * columns * 6);
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for col in 0..columns {
            if col > 0 {
                sql.push_str(", ");
            }
            sql.push('?');
            sql.push_str(&(first + row * columns + col).to_string());
        }
        sql.push(')');
    }
    sql
}

/// The stored sketches of `n` rows of one org and replica (PostgreSQL): one probe of the primary
/// key per row. A list of row values under `IN` is planned as a scan once the table is large, and
/// a plain join of the keys was too: the generic plan made while the table looked empty hashed
/// the keys and read all of the replica's rows, every statement, 200 ms each after a few hundred
/// thousand rows in one transaction. The `LIMIT` keeps the subquery apart (the planner does not
/// pull it up into a join), so it can only be run once per key, with every column of the key
/// bound.
pub(crate) fn read_sketches_sql(n: usize) -> String {
    let mut keys = String::with_capacity(n * 48);
    for row in 0..n {
        if row > 0 {
            keys.push_str(", ");
        }
        let at = 3 + row * 4;
        keys.push_str(&format!(
            "(?{}::bigint, ?{}::bigint, ?{}::text, ?{}::text)",
            at,
            at + 1,
            at + 2,
            at + 3
        ));
    }
    format!(
        "SELECT r.granularity_ms, r.bucket_ms, r.dim, r.key, r.latency, r.ttfb
         FROM (VALUES {keys}) AS k (g, b, d, key),
         LATERAL (SELECT s.granularity_ms, s.bucket_ms, s.dim, s.key, s.latency, s.ttfb
                  FROM rollups s
                  WHERE s.org_id = ?1 AND s.granularity_ms = k.g AND s.dim = k.d
                     AND s.bucket_ms = k.b AND s.key = k.key AND s.replica = ?2
                  LIMIT 1) r"
    )
}

/// The upsert of `n` rollup rows on PostgreSQL: the replica's own rows, their sketches already
/// merged (see [`Pending::write`]).
fn write_rows_sql(n: usize) -> String {
    format!(
        "INSERT INTO rollups (org_id, granularity_ms, bucket_ms, dim, key,
            requests, errors, input_tokens, output_tokens, cost_usd, latency_sum_ms, latency, ttfb,
            unpriced_requests, unpriced_input_tokens, unpriced_output_tokens, cached_input_tokens,
            cache_savings_usd, replica)
         VALUES {}
         ON CONFLICT (org_id, granularity_ms, dim, bucket_ms, key, replica) DO UPDATE SET
            requests = rollups.requests + excluded.requests,
            errors = rollups.errors + excluded.errors,
            input_tokens = rollups.input_tokens + excluded.input_tokens,
            output_tokens = rollups.output_tokens + excluded.output_tokens,
            cost_usd = rollups.cost_usd + excluded.cost_usd,
            latency_sum_ms = rollups.latency_sum_ms + excluded.latency_sum_ms,
            latency = excluded.latency,
            ttfb = excluded.ttfb,
            unpriced_requests = rollups.unpriced_requests + excluded.unpriced_requests,
            unpriced_input_tokens = rollups.unpriced_input_tokens + excluded.unpriced_input_tokens,
            unpriced_output_tokens =
                rollups.unpriced_output_tokens + excluded.unpriced_output_tokens,
            cached_input_tokens = rollups.cached_input_tokens + excluded.cached_input_tokens,
            cache_savings_usd = rollups.cache_savings_usd + excluded.cache_savings_usd",
        placeholder_rows(1, n, WRITE_COLUMNS)
    )
}

/// Register `sketch_merge(a, b)`: the merge of two sketch blobs (a blob that does not decode
/// counts as empty).
pub fn register(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        "sketch_merge",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let (a, b): (Vec<u8>, Vec<u8>) = (ctx.get(0)?, ctx.get(1)?);
            let mut merged = Sketch::from_bytes(&a).unwrap_or_default();
            merged.merge_bytes(&b);
            Ok(merged.to_bytes())
        },
    )
}

/// The figure columns of a rollup row, in the order [`merge_row`] reads them.
pub const FIGURES: &str = "requests, errors, input_tokens, output_tokens, cost_usd, latency_sum_ms,
    latency, ttfb, unpriced_requests, unpriced_input_tokens, unpriced_output_tokens,
    cached_input_tokens, cache_savings_usd";

/// Add a rollup row's figures into `a`: the columns of [`FIGURES`], starting at `at`. Sketches
/// are added straight from their blobs.
pub fn merge_row(a: &mut Agg, r: &db::Row, at: usize) -> db::Result<()> {
    let n = |i: usize| -> db::Result<u64> { Ok(r.get::<i64>(at + i)? as u64) };
    a.requests += n(0)?;
    a.errors += n(1)?;
    a.input_tokens += n(2)?;
    a.output_tokens += n(3)?;
    a.cost_usd += r.get::<f64>(at + 4)?;
    a.latency_sum_ms += r.get::<f64>(at + 5)?;
    a.latency.merge_bytes(r.blob(at + 6)?);
    a.ttfb.merge_bytes(r.blob(at + 7)?);
    a.unpriced_requests += n(8)?;
    a.unpriced_input_tokens += n(9)?;
    a.unpriced_output_tokens += n(10)?;
    a.cached_input_tokens += n(11)?;
    a.cache_savings_usd += r.get::<f64>(at + 12)?;
    Ok(())
}

/// The parts of `[from, to)` to read, coarsest first: whole days from day rows, whole hours
/// from hour rows, the rest from rows of `finest` (minute or hour) granularity. `from` and `to`
/// must be on `finest` boundaries. Returns (granularity, start, end) triples.
pub fn plan(from: i64, to: i64, finest: i64) -> Vec<(i64, i64, i64)> {
    fn split(from: i64, to: i64, levels: &[i64], out: &mut Vec<(i64, i64, i64)>) {
        if from >= to {
            return;
        }
        let Some((&g, finer)) = levels.split_first() else {
            return;
        };
        if finer.is_empty() {
            out.push((g, from, to));
            return;
        }
        let start = from.div_euclid(g) * g + if from.rem_euclid(g) == 0 { 0 } else { g };
        let end = to.div_euclid(g) * g;
        if start >= end {
            split(from, to, finer, out);
            return;
        }
        out.push((g, start, end));
        split(from, start, finer, out);
        split(end, to, finer, out);
    }
    let levels: &[i64] = if finest == MINUTE {
        &[DAY, HOUR, MINUTE]
    } else {
        &[DAY, HOUR]
    };
    let mut out = Vec::new();
    split(from, to, levels, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Pending's rows by (granularity, bucket, dimension, key), comparable whatever the ids.
    #[allow(clippy::type_complexity)]
    fn view(
        p: &mut Pending,
    ) -> std::collections::BTreeMap<(i64, i64, String, String), (u64, u64, u64, u64, u64)> {
        p.settle();
        p.all_rows()
            .iter()
            .map(|(&(g, b, id), a)| {
                let (dim, key) = p.names(id).unwrap();
                (
                    (g, b, dim.to_string(), key.to_string()),
                    (
                        a.requests,
                        a.errors,
                        a.input_tokens,
                        a.output_tokens,
                        a.latency.count(),
                    ),
                )
            })
            .collect()
    }

    #[test]
    fn merged_rows_are_the_rows_of_all_the_events() {
        let event = |i: u64| -> (Event, i64) {
            let e: Event = serde_json::from_value(serde_json::json!({
                "request_id": format!("r{i}"), "timestamp": "2026-01-01T00:00:00.000Z",
                "provider": if i.is_multiple_of(2) { "openai" } else { "anthropic" },
                "api": "chat_completions", "endpoint": "/v1/chat/completions",
                "model_requested": format!("m{}", i % 3), "streaming": false,
                "latency_ms": 10.0 * i as f64, "input_tokens": i, "output_tokens": 2 * i,
                "user": format!("u{}", i % 4), "routed": false,
                "error_category": if i.is_multiple_of(5) { Some("rate_limited") } else { None },
            }))
            .unwrap();
            (e, i as i64 * 50 * MINUTE)
        };
        // Each event twice: the second adds into the first's figures until they are settled.
        let events: Vec<_> = (0..80).map(|i| event(i % 40)).collect();
        let prices = PriceTable::builtin().unwrap();
        let (mut all, mut a, mut b) = (Pending::default(), Pending::default(), Pending::default());
        for (i, (e, ts)) in events.iter().enumerate() {
            all.add(&prices, e, *ts);
            if i % 3 == 0 {
                a.add(&prices, e, *ts)
            } else {
                b.add(&prices, e, *ts)
            }
        }
        assert_eq!(all.combos.len(), 40);
        // Settled rows and events not yet in rows merge alike.
        a.settle();
        let mut merged = Pending::default();
        merged.merge(&a);
        merged.merge(&b);
        let whole = view(&mut all);
        assert_eq!(view(&mut merged), whole);
        assert!(whole.len() > 100);
        assert!(whole.values().all(|r| r.0 % 2 == 0 && r.0 == r.4));
    }

    #[test]
    fn plans_cover_the_range_exactly_once() {
        let m = MINUTE;
        assert_eq!(plan(0, 0, MINUTE), vec![]);
        assert_eq!(plan(5 * m, 30 * m, MINUTE), vec![(MINUTE, 5 * m, 30 * m)]);
        assert_eq!(
            plan(5 * m, 3 * HOUR + 7 * m, MINUTE),
            vec![
                (HOUR, HOUR, 3 * HOUR),
                (MINUTE, 5 * m, HOUR),
                (MINUTE, 3 * HOUR, 3 * HOUR + 7 * m)
            ]
        );
        assert_eq!(plan(HOUR, 2 * HOUR, MINUTE), vec![(HOUR, HOUR, 2 * HOUR)]);
        // Two days and a bit: one whole day in the middle, hours and minutes at both edges.
        let parts = plan(23 * HOUR + 30 * m, 2 * DAY + HOUR + 10 * m, MINUTE);
        assert_eq!(parts[0], (DAY, DAY, 2 * DAY));
        let covered: i64 = parts.iter().map(|(_, a, b)| b - a).sum();
        assert_eq!(covered, 2 * DAY + HOUR + 10 * m - (23 * HOUR + 30 * m));
        let mut sorted: Vec<_> = parts.iter().map(|(_, a, b)| (*a, *b)).collect();
        sorted.sort();
        assert!(
            sorted.windows(2).all(|w| w[0].1 == w[1].0),
            "contiguous: {sorted:?}"
        );
        // Hour-only dimensions never read minutes.
        assert!(plan(0, 3 * DAY + 5 * HOUR, HOUR)
            .iter()
            .all(|p| p.0 != MINUTE));
    }
}
