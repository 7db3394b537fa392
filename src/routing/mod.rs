//! Routes as data, matched by a pure function: which route a request takes, from its method,
//! its authority, its path in normal form (`path.rs`) and its header fields. The table is an
//! immutable value built from the config (a reload swaps it whole); routes are tried in order
//! and the first that matches wins, as HAProxy's `use_backend` rules and Envoy's route lists do.
//! Nothing here touches a socket, a clock or the allocator on the way of a request.

pub mod path;

use crate::http::field_value;

/// A host a route answers for: exact, or `*.suffix` for one or more labels in front of it, as
/// nginx's and Envoy's wildcards (a TLS certificate's `*.` covers one label only). Lower case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The suffix with its leading dot: `*.example.com` is `.example.com`.
    Suffix(String),
}

impl HostPattern {
    /// `example.com` or `*.example.com`, any case.
    pub fn parse(pattern: &str) -> HostPattern {
        let lower = pattern.to_ascii_lowercase();
        match lower.strip_prefix('*') {
            Some(suffix) if suffix.starts_with('.') => HostPattern::Suffix(suffix.to_owned()),
            _ => HostPattern::Exact(lower),
        }
    }

    /// Whether `host` (already without its port and trailing dot) is one this pattern names.
    fn matches(&self, host: &[u8]) -> bool {
        match self {
            HostPattern::Exact(name) => host.eq_ignore_ascii_case(name.as_bytes()),
            HostPattern::Suffix(suffix) => {
                host.len() > suffix.len() && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }
}

/// What a route asks of a request; every condition given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Match {
    /// Empty: any host, and requests without one.
    pub hosts: Vec<HostPattern>,
    /// A prefix on a segment boundary (`/api` takes `/api`, `/api/x`, never `/apix`); one that
    /// ends in `/` is a plain prefix.
    pub path: Option<String>,
    /// Upper case, as methods are sent; empty: any method.
    pub methods: Vec<String>,
    /// Field name (lower case) and the exact value it must have.
    pub headers: Vec<(String, String)>,
}

/// A request as routes see it.
pub struct Request<'a> {
    pub method: &'a [u8],
    /// The authority (`Host`, or an absolute-form target's); its port and a trailing dot are
    /// ignored.
    pub host: Option<&'a [u8]>,
    /// The path in normal form, without the query.
    pub path: &'a [u8],
    /// The request head (its field lines are looked up by name: `http::field_value`).
    pub head: &'a [u8],
}

/// `example.com:8080.` → `example.com`; an IPv6 literal keeps its brackets.
pub fn bare_host(authority: &[u8]) -> &[u8] {
    let host = match authority.first() {
        Some(b'[') => authority.iter().position(|&b| b == b']').map_or(authority, |end| &authority[..=end]),
        _ => authority.iter().position(|&b| b == b':').map_or(authority, |colon| &authority[..colon]),
    };
    host.strip_suffix(b".").unwrap_or(host)
}

/// Whether `path` starts with `prefix` on a segment boundary.
pub fn path_matches(prefix: &[u8], path: &[u8]) -> bool {
    if !path.starts_with(prefix) {
        return false;
    }
    prefix.ends_with(b"/") || path.len() == prefix.len() || path[prefix.len()] == b'/'
}

impl Match {
    pub fn matches(&self, req: &Request<'_>) -> bool {
        let host_ok = self.hosts.is_empty()
            || req.host.map(bare_host).is_some_and(|host| self.hosts.iter().any(|p| p.matches(host)));
        host_ok
            && self.path.as_ref().is_none_or(|prefix| path_matches(prefix.as_bytes(), req.path))
            && (self.methods.is_empty() || self.methods.iter().any(|m| m.as_bytes() == req.method))
            && self.headers.iter().all(|(name, value)| field_value(req.head, name.as_bytes()) == Some(value.as_bytes()))
    }
}

/// The routes in file order, each with what its match is for (`A`: its action).
pub struct Table<A> {
    routes: Vec<(Match, A)>,
}

impl<A> Table<A> {
    pub fn new(routes: Vec<(Match, A)>) -> Table<A> {
        Table { routes }
    }

    /// The first route whose match holds: its index and action.
    pub fn find(&self, req: &Request<'_>) -> Option<(usize, &A)> {
        self.routes.iter().enumerate().find(|(_, (m, _))| m.matches(req)).map(|(i, (_, a))| (i, a))
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Routes that an earlier one shadows entirely: it asks for no more than they do, so they
    /// can never match first. (index of the shadowed, index of the one before it).
    pub fn shadowed(&self) -> Vec<(usize, usize)> {
        let mut found = Vec::new();
        for (j, (later, _)) in self.routes.iter().enumerate() {
            if let Some(i) = self.routes[..j].iter().position(|(earlier, _)| covers(earlier, later)) {
                found.push((j, i));
            }
        }
        found
    }
}

/// Every request `b` matches, `a` matches too.
fn covers(a: &Match, b: &Match) -> bool {
    let hosts = a.hosts.is_empty() || (!b.hosts.is_empty() && b.hosts.iter().all(|h| a.hosts.contains(h)));
    let path = match (&a.path, &b.path) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(pa), Some(pb)) => path_matches(pa.as_bytes(), pb.as_bytes()),
    };
    let methods = a.methods.is_empty() || (!b.methods.is_empty() && b.methods.iter().all(|m| a.methods.contains(m)));
    let headers = a.headers.iter().all(|h| b.headers.contains(h));
    hosts && path && methods && headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(method: &'a str, host: Option<&'a str>, path: &'a str) -> Request<'a> {
        Request { method: method.as_bytes(), host: host.map(str::as_bytes), path: path.as_bytes(), head: b"" }
    }

    fn host(patterns: &[&str]) -> Match {
        Match { hosts: patterns.iter().map(|p| HostPattern::parse(p)).collect(), ..Match::default() }
    }

    fn path(prefix: &str) -> Match {
        Match { path: Some(prefix.to_owned()), ..Match::default() }
    }

    #[test]
    fn hosts_match_exactly_or_by_suffix_whatever_the_case_port_or_trailing_dot() {
        let m = host(&["example.com", "*.Example.org"]);
        for (authority, ok) in [
            ("example.com", true),
            ("EXAMPLE.com:8080", true),
            ("example.com.", true),
            ("www.example.com", false),
            ("a.example.org", true),
            ("a.b.example.org:443", true),
            ("example.org", false),
            ("xexample.org", false),
        ] {
            assert_eq!(m.matches(&req("GET", Some(authority), "/")), ok, "{authority}");
        }
        assert!(!m.matches(&req("GET", None, "/")), "a request without a host takes only routes without one");
        assert!(Match::default().matches(&req("GET", None, "/")));
        assert_eq!(bare_host(b"[::1]:8080"), b"[::1]");
    }

    #[test]
    fn a_path_prefix_ends_on_a_segment_boundary_unless_it_ends_in_a_slash() {
        let api = path("/api");
        for (p, ok) in [("/api", true), ("/api/", true), ("/api/x", true), ("/apix", false), ("/ap", false)] {
            assert_eq!(api.matches(&req("GET", None, p)), ok, "{p}");
        }
        let grpc = path("/t.T/");
        assert!(grpc.matches(&req("POST", None, "/t.T/Echo")));
        assert!(!grpc.matches(&req("POST", None, "/t.T")));
        assert!(path("/").matches(&req("GET", None, "/anything")));
    }

    #[test]
    fn methods_and_fields_must_all_hold() {
        let m = Match {
            methods: vec!["POST".into()],
            headers: vec![("x-tenant".into(), "blue".into())],
            ..path("/upload")
        };
        let head = b"POST /upload HTTP/1.1\r\nHost: a\r\nX-Tenant: blue\r\n\r\n";
        let mut r = Request { method: b"POST", host: None, path: b"/upload", head };
        assert!(m.matches(&r));
        r.method = b"GET";
        assert!(!m.matches(&r));
        let r = Request { head: b"POST /upload HTTP/1.1\r\nX-Tenant: green\r\n\r\n", ..r };
        assert!(!m.matches(&Request { method: b"POST", ..r }));
    }

    #[test]
    fn the_first_route_that_matches_wins_and_a_shadowed_one_is_found() {
        let table = Table::new(vec![
            (host(&["api.example.com"]), "api-host"),
            (Match { path: Some("/api".into()), ..host(&["example.com", "*.example.com"]) }, "api"),
            (path("/internal"), "forbidden"),
            (Match { path: Some("/internal/x".into()), ..Match::default() }, "never"),
            (Match::default(), "web"),
            (path("/late"), "after the catch-all"),
        ]);
        let find = |h: Option<&str>, p: &str| table.find(&req("GET", h, p)).map(|(_, a)| *a);
        assert_eq!(find(Some("api.example.com"), "/api"), Some("api-host"));
        assert_eq!(find(Some("www.example.com"), "/api/v1"), Some("api"));
        assert_eq!(find(Some("www.example.com"), "/apix"), Some("web"));
        assert_eq!(find(None, "/internal/x"), Some("forbidden"));
        assert_eq!(find(Some("other.test"), "/"), Some("web"));
        assert_eq!(table.shadowed(), vec![(3, 2), (5, 4)]);
    }
}
