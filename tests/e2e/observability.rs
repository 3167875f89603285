//! The shipped alert rules and dashboard against real nodes, and a real Prometheus scraping
//! a cluster: alerts fire when a node dies and resolve when it is back.

use crate::cluster::{http_get, stdout, TestCluster};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(path)
}

/// Every `cohort_*` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("cohort_") {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Whether `/metrics` (OpenMetrics text) exports `name`: as a sample, or as a family whose
/// samples carry a suffix (`_total`, `_bucket`, ...) and may have none yet (no election yet).
fn exported(metrics: &str, name: &str) -> bool {
    let sample = |line: &str| line.split([' ', '{']).next() == Some(name);
    let family = ["_bucket", "_count", "_sum", "_total"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .chain([name])
        .any(|base| metrics.contains(&format!("# TYPE {base} ")));
    metrics.lines().any(sample) || family
}

#[test]
fn the_alert_rules_and_the_dashboard_read_only_metrics_a_node_exports() {
    let cluster = TestCluster::start(3);
    stdout(&cluster.cli(&["repo", "create", "o.git"]));
    let metrics = http_get(&cluster.node(1).http_address, "/metrics");
    let alerts = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let dashboard_text = std::fs::read_to_string(deploy("grafana/cohort.json")).unwrap();
    for (file, text) in [("alerts.yml", &alerts), ("cohort.json", &dashboard_text)] {
        let names = metric_names(text);
        assert!(names.len() >= 10, "{file} reads {names:?}");
        let missing: Vec<_> = names.iter().filter(|name| !exported(&metrics, name)).collect();
        assert!(missing.is_empty(), "{file} reads metrics no node exports: {missing:?}");
    }

    // Node liveness measures the round trip to each peer: on loopback, well under a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = http_get(&cluster.node(1).http_address, "/metrics");
        let rtt = |peer: u64| {
            let prefix = format!("cohort_peer_rtt_seconds{{peer=\"{peer}\"}} ");
            metrics.lines().find_map(|line| line.strip_prefix(&prefix)?.parse::<f64>().ok())
        };
        if let (Some(two), Some(three)) = (rtt(2), rtt(3)) {
            assert!((0.0..1.0).contains(&two) && (0.0..1.0).contains(&three), "round trips {two} s and {three} s");
            break;
        }
        assert!(Instant::now() < deadline, "no round trip measured:\n{metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The dashboard is one Grafana can import: unique panel ids, every panel placed, titled
    // and querying Prometheus, no two panels overlapping.
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard_text).unwrap();
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("a title");
        assert!(ids.insert(panel["id"].as_u64().expect("an id")), "panel ids are unique: {title}");
        assert!(panel["type"].is_string(), "{title} has a type");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} queries something");
        for target in targets {
            let expr = target["expr"].as_str().expect("a query");
            assert!(expr.contains("cohort_") || expr.contains("up{"), "{title}: {expr}");
        }
        let grid = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| grid[k].as_u64().expect("gridPos"));
        assert!(x + w <= 24, "{title} fits the 24-column grid");
        for column in x..x + w {
            for row in y..y + h {
                assert!(cells.insert((column, row)), "{title} overlaps another panel");
            }
        }
    }
}

/// The body of an HTTP/1.1 response, its chunks joined if it came chunked.
fn http_body(response: &str) -> String {
    let (head, mut body) = response.split_once("\r\n\r\n").expect("headers end");
    if !head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return body.to_owned();
    }
    let mut joined = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").expect("a chunk size");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return joined;
        }
        joined.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

/// A Prometheus server, killed when dropped.
struct Prometheus {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `targets` (job `cohort`) every second and evaluates the shipped rules every
    /// second.
    fn start(targets: &[String]) -> Prometheus {
        assert!(
            Command::new("prometheus").arg("--version").output().is_ok_and(|o| o.status.success()),
            "this test needs `prometheus` on PATH (Debian's package `prometheus`; scripts/test installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: cohort\n    static_configs:\n      - targets: [{}]\n",
            deploy("prometheus/alerts.yml").display(),
            targets.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let address = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={address}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let prometheus = Prometheus { child, address, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http_get(&prometheus.address, "/-/ready").starts_with("HTTP/1.1 200") {
            assert!(Instant::now() < deadline, "prometheus never became ready");
            std::thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    /// The alerts firing now, as (name, instance).
    fn firing(&self) -> BTreeSet<(String, String)> {
        self.alerts(|state| state == "firing")
    }

    /// The alerts whose state (`pending` or `firing`) passes `state`.
    fn alerts(&self, state: impl Fn(&str) -> bool) -> BTreeSet<(String, String)> {
        let body = http_body(&http_get(&self.address, "/api/v1/alerts"));
        let json: serde_json::Value = serde_json::from_str(&body).expect("the alerts API answers JSON");
        json["data"]["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .filter(|alert| state(alert["state"].as_str().unwrap_or_default()))
            .map(|alert| {
                let labels = &alert["labels"];
                (labels["alertname"].as_str().unwrap().to_owned(), labels["instance"].as_str().unwrap().to_owned())
            })
            .collect()
    }

    fn wait_for(&self, what: &str, limit: Duration, done: impl Fn(&BTreeSet<(String, String)>) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            let firing = self.firing();
            if done(&firing) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}; firing: {firing:?}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[test]
fn prometheus_fires_node_down_and_under_replicated_alerts_and_resolves_them_after_a_restart() {
    let mut cluster = TestCluster::start(3);
    stdout(&cluster.cli(&["repo", "create", "p.git"]));
    let targets: Vec<String> = (1..=3).map(|id| cluster.node(id).http_address.clone()).collect();
    let prometheus = Prometheus::start(&targets);
    // A healthy cluster fires nothing.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(prometheus.alerts(|_| true), BTreeSet::new(), "a healthy cluster has no alert, not even pending");

    // Node 3 dies. Its scrape fails (node down); the partitions led elsewhere have a voter on
    // it (under-replicated). Both alerts wait a minute (`for: 1m`) before firing.
    cluster.kill9(3);
    let victim = targets[2].clone();
    let survivors = [targets[0].clone(), targets[1].clone()];
    prometheus.wait_for("node down and under-replicated fire", Duration::from_secs(120), |firing| {
        firing.contains(&("CohortNodeDown".into(), victim.clone()))
            && survivors.iter().any(|s| firing.contains(&("CohortPartitionUnderReplicated".into(), s.clone())))
    });

    // Back: both resolve.
    cluster.start_node(3);
    cluster.wait_serving(3);
    prometheus.wait_for("the alerts resolve", Duration::from_secs(60), |firing| {
        !firing.iter().any(|(name, _)| name == "CohortNodeDown" || name == "CohortPartitionUnderReplicated")
    });
}

/// Waits until the node at `http` says it is healthy (every peer connected, nothing
/// under-replicated or leaderless); returns its `/status.json`.
pub fn wait_healthy(http: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = http_get(http, "/status.json");
        let body: serde_json::Value = serde_json::from_str(&http_body(&response)).expect("status JSON");
        if body["healthy"] == true {
            return body;
        }
        assert!(Instant::now() < deadline, "never healthy: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The page as headless Chromium renders it once its script has run: the DOM, and a
/// screenshot at `screenshot`.
fn render_in_chromium(url: &str, screenshot: &Path) -> String {
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|name| Command::new(name).arg("--version").output().is_ok_and(|o| o.status.success()))
        .expect("this test needs Chromium on PATH (Debian's package `chromium`; scripts/test installs it)");
    let profile = tempfile::tempdir().unwrap();
    let run = |extra: &[String]| {
        let output = Command::new("timeout")
            .arg("60")
            .arg(chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1100,800"])
            // No shared-memory files (small /dev/shm in containers), and none of Chromium's own
            // traffic to the outside, which a closed network refuses (slowly, at every start).
            .args(["--disable-dev-shm-usage", "--disable-background-networking", "--disable-component-update"])
            .args(["--disable-sync", "--no-first-run", "--disable-quic"])
            // Lets the page's fetch and timers run before the DOM is taken.
            .arg("--virtual-time-budget=5000")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(url)
            .output()
            .unwrap();
        assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    run(&[format!("--screenshot={}", screenshot.display())]);
    assert!(std::fs::metadata(screenshot).is_ok_and(|m| m.len() > 0), "a screenshot was written");
    run(&["--dump-dom".to_owned()])
}

#[test]
fn the_status_page_shows_nodes_replicas_and_what_needs_attention_in_a_browser() {
    let mut cluster = TestCluster::start(3);
    for name in ["a.git", "b.git"] {
        stdout(&cluster.cli(&["repo", "create", name]));
    }
    wait_healthy(&cluster.node(1).http_address);
    let url = format!("http://{}/", cluster.node(1).http_address);
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dom = render_in_chromium(&url, &artifacts.join("status-page-healthy.png"));
    assert!(dom.contains(r#"<span id="health" class="ok">healthy</span>"#), "{dom}");
    assert!(dom.contains("updated "), "the script drew the page");
    assert_eq!(dom.matches(r#"<td class="ok">up</td>"#).count(), 3, "three nodes up: {dom}");
    assert!(dom.contains("<td>1 (this node)</td>"));
    // The directory and the two repositories' partitions, each with its leader.
    assert!(dom.contains(r#"<td class="n">0 (directory)</td>"#));
    let rows = dom.split("<tbody>").nth(2).expect("the partitions table").split("</tbody>").next().unwrap();
    assert!(rows.matches("<tr>").count() >= 3, "every replica is listed: {rows}");
    assert!(!rows.contains(">none<"), "every partition has a leader: {rows}");

    // Node 3 dies: the page says so, and which partitions it leaves under-replicated.
    cluster.kill9(3);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http_get(&cluster.node(1).http_address, "/status.json").contains(r#""healthy":false"#) {
        assert!(Instant::now() < deadline, "node 1 never noticed node 3's death");
        std::thread::sleep(Duration::from_millis(200));
    }
    let dom = render_in_chromium(&url, &artifacts.join("status-page-node-down.png"));
    assert!(dom.contains(r#"<span id="health" class="bad">needs attention: "#), "{dom}");
    assert!(dom.contains("node 3 does not answer"), "{dom}");
    assert!(dom.contains(r#"<td class="bad">down</td>"#), "{dom}");
    eprintln!("status page screenshots in {}", artifacts.display());
}
