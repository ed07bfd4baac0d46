//! The agent's HTTP endpoints against their clients, in cluster mode (the test API server answers
//! TokenReviews and SubjectAccessReviews for the tokens and users each test registers):
//!
//! - `/metrics` without a token or with an unknown one is 401, with a token whose user may not
//!   `get /metrics` 403, with an allowed one 200 and the metrics; `/healthz` needs no token;
//!   reviews are cached (a second scrape with the same token makes no new review);
//! - token reviews are paced: a flood of distinct unknown tokens costs the API server at most
//!   `--metrics-review-burst` TokenReviews, the rest are 429 with `Retry-After` and no review, and
//!   a cached token keeps its metrics;
//! - a client that never finishes its headers is disconnected after `--http-header-timeout`;
//! - past `--http-max-connections` a connection is closed unserved, and served again once one
//!   of the others closes.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use pullgate_testenv::cluster::Cluster;
use pullgate_testenv::process::free_port;
use std::io::{Read, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// `GET path` with this `Authorization` header: the status code and the body.
fn get(port: u16, path: &str, authorization: Option<&str>) -> Option<(u16, String)> {
    get_with_head(port, path, authorization).map(|(status, _, body)| (status, body))
}

/// `GET path`: the status code, the response head (status line and headers) and the body.
fn get_with_head(
    port: u16,
    path: &str,
    authorization: Option<&str>,
) -> Option<(u16, String, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    Some((status, head.to_string(), body.to_string()))
}

/// Waits until `f` gives something, for at most `timeout`.
fn wait<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the server closed `stream` (EOF or reset) before `deadline` passed.
fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn metrics_need_a_token_the_api_server_allows() {
    let cluster = Cluster::start(&[]);
    cluster.api.add_token(
        "token-reader",
        "system:serviceaccount:monitoring:prometheus",
    );
    cluster
        .api
        .allow_metrics("system:serviceaccount:monitoring:prometheus");
    cluster
        .api
        .add_token("token-other", "system:serviceaccount:team:app");
    let port = free_port().unwrap();
    let agent = cluster.agent(&["--metrics-addr", &format!("127.0.0.1:{port}")]);
    let healthz = wait("/healthz", Duration::from_secs(30), || {
        get(port, "/healthz", None)
    });
    assert_eq!(healthz.0, 200, "{healthz:?}\n{}", agent.stderr());

    let table: &[(Option<&str>, u16)] = &[
        (None, 401),
        (Some("Basic dXNlcjpwYXNz"), 401),
        (Some("Bearer unknown-token"), 401),
        (Some("Bearer token-other"), 403),
        (Some("Bearer token-reader"), 200),
    ];
    for (authorization, want) in table {
        let (status, body) = get(port, "/metrics", *authorization).unwrap();
        assert_eq!(status, *want, "{authorization:?}: {body}");
        assert_eq!(
            body.contains("pullgate_"),
            *want == 200,
            "{authorization:?}: {body}"
        );
    }
    // Cached: the same token again makes no new review.
    let reviews = cluster.api.review_counts();
    assert_eq!(
        get(port, "/metrics", Some("Bearer token-reader"))
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        get(port, "/metrics", Some("Bearer token-other")).unwrap().0,
        403
    );
    assert_eq!(cluster.api.review_counts(), reviews);
    let (stdout, stderr) = agent.finish();
    for token in ["token-reader", "token-other", "unknown-token"] {
        assert!(
            !stdout.contains(token) && !stderr.contains(token),
            "{token}"
        );
    }
}

#[test]
fn a_flood_of_unknown_tokens_is_refused_without_reviews_past_the_limit() {
    let cluster = Cluster::start(&[]);
    cluster.api.add_token(
        "token-reader",
        "system:serviceaccount:monitoring:prometheus",
    );
    cluster
        .api
        .allow_metrics("system:serviceaccount:monitoring:prometheus");
    let port = free_port().unwrap();
    // Five reviews, then one an hour: the bound below does not depend on how fast this runs.
    let agent = cluster.agent(&[
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--metrics-review-burst",
        "5",
        "--metrics-review-refill",
        "1h",
    ]);
    wait("/healthz", Duration::from_secs(30), || {
        get(port, "/healthz", None)
    });
    let (status, body) = get(port, "/metrics", Some("Bearer token-reader")).unwrap();
    assert_eq!(status, 200, "{body}\n{}", agent.stderr());
    let (reviews_before, _) = cluster.api.review_counts();

    const FLOOD: usize = 60;
    let (mut unauthorized, mut throttled) = (0, 0);
    for i in 0..FLOOD {
        let token = format!("Bearer random-token-{i}");
        let (status, head, body) = get_with_head(port, "/metrics", Some(&token)).unwrap();
        match status {
            401 => unauthorized += 1,
            429 => {
                assert!(
                    head.to_ascii_lowercase().contains("\r\nretry-after: 3600"),
                    "{head}"
                );
                assert!(!body.contains("pullgate_"), "{body}");
                throttled += 1;
            }
            other => panic!("{other}: {head}\n{body}"),
        }
    }
    let (reviews_after, _) = cluster.api.review_counts();
    // The reader's review took one of the five.
    assert_eq!(unauthorized, 4, "{}", agent.stderr());
    assert_eq!(throttled, FLOOD - 4);
    assert_eq!(
        reviews_after - reviews_before,
        unauthorized,
        "one TokenReview per unknown token answered, none for the refused ones"
    );
    // The cached reader still gets its metrics, with no review.
    let (status, body) = get(port, "/metrics", Some("Bearer token-reader")).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("pullgate_"), "{body}");
    assert_eq!(cluster.api.review_counts().0, reviews_after);
    let (stdout, stderr) = agent.finish();
    assert!(
        !stdout.contains("random-token") && !stderr.contains("random-token"),
        "a token in the output"
    );
}

#[test]
fn a_client_that_never_finishes_its_headers_is_cut() {
    let cluster = Cluster::start(&[]);
    let port = free_port().unwrap();
    let agent = cluster.agent(&[
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--http-header-timeout",
        "1s",
    ]);
    wait("/healthz", Duration::from_secs(30), || {
        get(port, "/healthz", None)
    });
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(slow, "GET /healthz HTTP/1.1\r\nHost: localhost\r\n").unwrap();
    assert!(
        closed_by_server(&mut slow, Duration::from_secs(30)),
        "still open\n{}",
        agent.stderr()
    );
    drop(agent);
}

#[test]
fn connections_past_the_cap_are_not_served_until_one_closes() {
    let cluster = Cluster::start(&[]);
    let port = free_port().unwrap();
    let agent = cluster.agent(&[
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--http-max-connections",
        "2",
        "--http-header-timeout",
        "5m",
    ]);
    wait("/healthz", Duration::from_secs(30), || {
        get(port, "/healthz", None)
    });
    let first = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _second = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // Both slots held by idle connections: the third is closed without an answer.
    let mut third = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = write!(
        third,
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    );
    let mut answer = String::new();
    let _ = third.read_to_string(&mut answer);
    assert!(answer.is_empty(), "served past the cap: {answer}");
    // One closes: served again.
    drop(first);
    let healthz = wait("a connection served again", Duration::from_secs(30), || {
        get(port, "/healthz", None)
    });
    assert_eq!(healthz.0, 200, "{}", agent.stderr());
}
