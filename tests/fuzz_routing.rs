//! Stable fuzzing of path normalisation and route matching inside `cargo test` (proptest): no
//! spelling of a path can take a route its normal form does not take.
//!
//! - A canonical path, spelled with percent-encoded unreserved characters (any case), `.`
//!   segments, `x/..` detours, repeated slashes and `%2e` dots, normalises back to itself, so
//!   every route table chooses for the spelling what it chooses for the path.
//! - Any bytes at all either are refused or normalise to a fixed point with no `//`, no `.` or
//!   `..` segment, no raw `\`, and no encoded separator or control byte.
//!
//! Budget: `FUZZ_CASES` cases per property (default 2,000), seeded afresh each run.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use ringproxy::routing::path::normalize;
use ringproxy::routing::{HostPattern, Match, Request, Table};

fn cases() -> u32 {
    std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000)
}

fn run<S: Strategy>(strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    let config = Config { cases: cases(), failure_persistence: None, ..Config::default() };
    if let Err(e) = TestRunner::new(config).run(&strategy, test) {
        panic!("{e}");
    }
}

/// Segments routes and paths are made of: few, so that prefixes and paths often meet.
const SEGMENTS: [&str; 6] = ["api", "internal", "v1", "a.b", "~u", "x-y"];

fn canonical_path() -> impl Strategy<Value = String> {
    (prop::collection::vec(prop::sample::select(SEGMENTS.to_vec()), 0..5), any::<bool>()).prop_map(|(segs, slash)| {
        let mut path = format!("/{}", segs.join("/"));
        if slash && !segs.is_empty() {
            path.push('/');
        }
        path
    })
}

/// One way of spelling a segment's byte.
fn spell_byte(b: u8, how: u8) -> String {
    match how % 3 {
        0 => (b as char).to_string(),
        1 => format!("%{b:02X}"),
        _ => format!("%{b:02x}"),
    }
}

/// `path` spelled otherwise: each byte of a segment perhaps encoded, and between segments
/// perhaps a `.` segment, a detour through another segment and `..`, or a doubled slash.
fn spelling(path: &str, choices: &[u8]) -> String {
    let mut choice = choices.iter().copied().cycle();
    let mut next = move || choice.next().unwrap_or(0);
    let mut out = String::new();
    for seg in path.split('/').skip(1) {
        match next() % 6 {
            0 => out.push_str("/."),
            1 => out.push_str(&format!("/{}/%2E%2e", SEGMENTS[next() as usize % SEGMENTS.len()])),
            2 => out.push('/'),
            _ => {}
        }
        out.push('/');
        for b in seg.bytes() {
            out.push_str(&spell_byte(b, next()));
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn normal(path: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0u8; path.len().max(1)];
    normalize(path, &mut out).ok().map(|n| out[..n].to_vec())
}

fn routes() -> impl Strategy<Value = Vec<(Option<String>, bool)>> {
    prop::collection::vec((prop::option::of(canonical_path()), any::<bool>()), 1..8)
}

#[test]
fn every_spelling_of_a_path_takes_the_route_the_path_takes() {
    run((canonical_path(), prop::collection::vec(any::<u8>(), 1..64), routes()), |(path, choices, routes)| {
        let spelled = spelling(&path, &choices);
        let form = normal(spelled.as_bytes());
        prop_assert_eq!(form.as_deref(), Some(path.as_bytes()), "{} spelled {}", path, spelled);
        let table = Table::new(
            routes
                .iter()
                .enumerate()
                .map(|(i, (prefix, host))| {
                    let hosts = if *host { vec![HostPattern::parse("*.example.com")] } else { Vec::new() };
                    (Match { path: prefix.clone(), hosts, ..Match::default() }, i)
                })
                .collect(),
        );
        let take = |p: &[u8]| {
            let req = Request { method: b"GET", host: Some(b"www.example.com"), path: p, head: b"" };
            table.find(&req).map(|(i, _)| i)
        };
        let spelled_form = form.unwrap_or_default();
        prop_assert_eq!(take(&spelled_form), take(path.as_bytes()));
        Ok(())
    });
}

#[test]
fn any_bytes_are_refused_or_reach_a_fixed_point_without_ambiguity() {
    let alphabet = prop::sample::select(b"/./..%2e%2E%2f%5c\\%00%41az~-_ ?#%".to_vec());
    run(prop::collection::vec(alphabet, 0..40), |mut bytes| {
        bytes.insert(0, b'/');
        let Some(form) = normal(&bytes) else {
            return Ok(());
        };
        let again = normal(&form);
        prop_assert_eq!(again.as_deref(), Some(&form[..]), "not a fixed point");
        let text = String::from_utf8_lossy(&form).into_owned();
        prop_assert!(!text.contains("//") && !text.contains('\\'), "{}", text);
        for seg in text.split('/') {
            prop_assert!(seg != "." && seg != "..", "a dot segment left in {}", text);
        }
        let upper = text.to_ascii_uppercase();
        prop_assert!(!upper.contains("%2F") && !upper.contains("%5C") && !upper.contains("%00"), "{}", text);
        prop_assert!(!upper.contains("%2E") && !upper.contains("%41"), "an unreserved byte left encoded: {}", text);
        Ok(())
    });
}
