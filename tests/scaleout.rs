//! Scale-out behind HAProxy, tested: two cserverd "hosts" in their own network namespaces
//! (ip netns + veth, made and removed by the test), HAProxy in front with `send-proxy-v2` and TCP
//! health checks. Every transaction through HAProxy is acknowledged, each host's log holds its
//! share with the client's real address, and the shares add up; when one host stops mid-run,
//! HAProxy routes to the other and nothing acknowledged is missing.
//!
//! Each host also serves `/metrics` on its veth address, and a real Prometheus (the Debian
//! package's binary, in a temp dir, on 127.0.0.1) scrapes both every second: after the 1000-user
//! run, `sum(cserverd_requests_total)` through its query API equals the client's acknowledged
//! count exactly, and both targets are up. The shipped `contrib/prometheus` files pass promtool.
//!
//! Needs root (CI has it); the traffic never leaves the machine: the namespaces are private and
//! the client talks to HAProxy on 127.0.0.1.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Each host's `--metrics-addr` port (each host has its own address, so they can share it).
const METRICS_PORT: u16 = 9101;

/// A cserverd in its own namespace, reachable at `addr` from the root namespace.
struct Host {
    ns: String,
    addr: String,
    /// The root namespace's end of the veth: where HAProxy's connections come from.
    proxy: String,
    dir: PathBuf,
    server: Option<Child>,
}

impl Host {
    fn new(name: &str, subnet: &str) -> Host {
        let ns = format!("cs-{name}-{}", std::process::id());
        let (outer, inner) = (
            format!("v{name}o{}", std::process::id() % 10000),
            format!("v{name}i"),
        );
        run(&["ip", "netns", "add", &ns]);
        run(&[
            "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        run(&["ip", "link", "set", &inner, "netns", &ns]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{subnet}.1/24"),
            "dev",
            &outer,
        ]);
        run(&["ip", "link", "set", &outer, "up"]);
        run(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "ip",
            "addr",
            "add",
            &format!("{subnet}.2/24"),
            "dev",
            &inner,
        ]);
        run(&[
            "ip", "netns", "exec", &ns, "ip", "link", "set", &inner, "up",
        ]);
        run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        let dir = tempfile::tempdir().unwrap().keep();
        let mut host = Host {
            ns,
            addr: format!("{subnet}.2"),
            proxy: format!("{subnet}.1"),
            dir,
            server: None,
        };
        host.start();
        host
    }

    /// Where the master serves /metrics: the host's own address, seen from the root namespace.
    fn metrics(&self) -> String {
        format!("{}:{METRICS_PORT}", self.addr)
    }

    fn log(&self) -> PathBuf {
        self.dir.join("log")
    }

    fn start(&mut self) {
        let child = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, CSERVERD, "--host", &self.addr, "--port", "31337",
            ])
            .args([
                "--workers",
                "2",
                "--proxy-protocol",
                "--proxy-from",
                &self.proxy,
                "--shutdown-timeout",
                "2",
                "--metrics-addr",
                &self.metrics(),
            ])
            .arg("--log")
            .arg(self.log())
            .arg("--stats-file")
            .arg(self.dir.join("sb"))
            .arg("--pid-file")
            .arg(self.dir.join("pid"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.server = Some(child);
        let pid = self.dir.join("pid");
        wait_until("the host to start", PATIENCE, || {
            fs::read_to_string(self.log()).is_ok_and(|l| l.matches("have child pid").count() == 2)
                && pid.exists()
        });
    }

    /// Graceful stop (SIGTERM to the master), waiting for it to exit.
    fn stop(&mut self) {
        let pid: i32 = fs::read_to_string(self.dir.join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        if let Some(mut c) = self.server.take() {
            let _ = c.wait();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = Command::new("ip")
                .args(["netns", "pids", &self.ns])
                .output()
                .map(|o| {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        let _ = Command::new("kill").args(["-9", pid]).status();
                    }
                });
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- {} log ----\n{}",
                self.ns,
                fs::read_to_string(self.log()).unwrap_or_default()
            );
        }
        // Deleting the namespace removes its veth and the peer in the root namespace.
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.ns])
            .status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

struct Haproxy {
    child: Child,
    port: u16,
}

impl Haproxy {
    fn start(dir: &Path, backends: &[&Host]) -> Haproxy {
        // A free port on loopback for the frontend.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut conf = format!(
            "global\n  maxconn 8000\ndefaults\n  mode tcp\n  timeout connect 500ms\n  timeout client 30s\n  \
             timeout server 30s\n  retries 2\n  option redispatch\nfrontend fe\n  bind 127.0.0.1:{port}\n  \
             default_backend be\nbackend be\n  balance roundrobin\n"
        );
        for (i, h) in backends.iter().enumerate() {
            conf += &format!(
                "  server h{i} {}:31337 send-proxy-v2 check inter 200 fall 2 rise 1\n",
                h.addr
            );
        }
        let path = dir.join("haproxy.cfg");
        fs::write(&path, conf).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (Debian package haproxy; make test installs it)");
        wait_until("haproxy to listen", PATIENCE, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Haproxy { child, port }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped rules file (also loaded by the test's Prometheus).
fn contrib_prometheus(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib/prometheus")
        .join(file)
}

/// A real Prometheus server in a temp dir, listening on loopback, scraping the hosts' /metrics
/// every second; killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, hosts: &[&Host]) -> Prometheus {
        let targets: Vec<String> = hosts
            .iter()
            .map(|h| format!("\"{}\"", h.metrics()))
            .collect();
        let conf =
            format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 800ms\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules:?}\n\
             scrape_configs:\n  - job_name: cserverd\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", "),
            rules = contrib_prometheus("cserverd.rules.yml").display().to_string(),
        );
        let config = dir.join("prometheus.yml");
        fs::write(&config, conf).unwrap();
        // The port is found by binding port 0 and released before Prometheus binds it; if
        // something else takes it in between, Prometheus exits and the start is tried once more.
        for attempt in 1..=2 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::from(
                    fs::File::create(dir.join("prometheus.log")).unwrap(),
                ))
                .spawn()
                .expect("prometheus (Debian package prometheus; make test installs it)");
            let mut prom = Prometheus {
                child,
                port,
                dir: dir.to_path_buf(),
            };
            let mut exited = false;
            wait_until("prometheus to be ready", PATIENCE, || {
                if prom.child.try_wait().unwrap().is_some() {
                    exited = true;
                    return true;
                }
                prom.get("/-/ready").is_some_and(|(code, _)| code == 200)
            });
            if !exited {
                return prom;
            }
            assert!(attempt < 2, "prometheus did not start:\n{}", prom.log());
            eprintln!("prometheus exited at start (port {port} taken?), trying once more");
        }
        unreachable!()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// HTTP GET `path` (with an optional PromQL `query`), bounded by 2 s: (status, body).
    fn get_query(&self, path: &str, query: Option<&str>) -> Option<(u16, String)> {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--max-time", "2", "-w", "\n%{http_code}"]);
        if let Some(q) = query {
            curl.args(["-G", "--data-urlencode"])
                .arg(format!("query={q}"));
        }
        let out = curl
            .arg(format!("http://127.0.0.1:{}{path}", self.port))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n')?;
        Some((code.trim().parse().ok()?, body.to_string()))
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        self.get_query(path, None)
    }

    /// An instant query's samples: (labels, value).
    fn query(&self, q: &str) -> Result<Vec<(serde_json::Value, f64)>, String> {
        let (code, body) = self
            .get_query("/api/v1/query", Some(q))
            .ok_or("no answer")?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{code} {e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("{code}: {body}"));
        }
        v["data"]["result"]
            .as_array()
            .ok_or_else(|| body.clone())?
            .iter()
            .map(|r| {
                let value = r["value"][1]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| body.clone())?;
                Ok((r["metric"].clone(), value))
            })
            .collect()
    }

    /// Polls query `q` until `ok` accepts its samples, for 30 s at most (a few scrapes and rule
    /// evaluations); on timeout, panics with the last answer and Prometheus's log.
    fn wait_for(&self, what: &str, q: &str, ok: impl Fn(&[(serde_json::Value, f64)]) -> bool) {
        let limit = Duration::from_secs(30);
        let deadline = std::time::Instant::now() + limit;
        loop {
            let last = match self.query(q) {
                Ok(samples) if ok(&samples) => return,
                Ok(samples) => format!("{samples:?}"),
                Err(e) => e,
            };
            assert!(
                std::time::Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what} ({q}); last answer: {last}\n\
                 ---- prometheus log ----\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cclient(port: u16, args: &[&str]) -> serde_json::Value {
    let out = Command::new(CCLIENT)
        .args(["--port", &port.to_string(), "--json", "--timeout", "30"])
        .args(args)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// Number of `completed req` records in a host's log so far (a plain count: the log may be
/// read while it is being written).
fn completed_count(host: &Host) -> usize {
    fs::read_to_string(host.log())
        .unwrap_or_default()
        .matches(" -- completed req \"")
        .count()
}

/// Completed message texts in a host's log, and whether it saw the real client address.
fn completed(host: &Host) -> (Vec<String>, usize) {
    let text = fs::read_to_string(host.log()).unwrap();
    let records = parse_log(&text);
    let texts = records
        .into_iter()
        .filter_map(|r| match r {
            Record::Completed { text, .. } => Some(text),
            _ => None,
        })
        .collect();
    let real = text
        .lines()
        .filter(|l| l.contains("connection from 127.0.0.1:"))
        .count();
    (texts, real)
}

#[test]
fn two_hosts_behind_haproxy_share_the_load_and_survive_one_stopping() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: network namespaces need root (CI runs as root)");
        return;
    }
    let subnet = 100 + std::process::id() % 100;
    let mut a = Host::new("a", &format!("10.{subnet}.1"));
    let b = Host::new("b", &format!("10.{subnet}.2"));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Haproxy::start(dir.path(), &[&a, &b]);
    let prometheus = Prometheus::start(dir.path(), &[&a, &b]);
    let both_up = |r: &[(serde_json::Value, f64)]| {
        let mut up: Vec<String> = r
            .iter()
            .filter(|(_, v)| *v == 1.0)
            .map(|(m, _)| m["instance"].as_str().unwrap_or_default().to_string())
            .collect();
        up.sort();
        up == [a.metrics(), b.metrics()]
    };
    // Both hosts scraped before the load: Prometheus sees the totals go up from 0.
    prometheus.wait_for("both targets scraped", r#"up{job="cserverd"}"#, both_up);
    prometheus.wait_for("both masters running", "cserverd_up", both_up);

    // 1000 users through HAProxy: all acknowledged; each host has its share, from the real
    // client address; the shares add up exactly.
    let summary = cclient(proxy.port, &["--threads", "1000", "--message", "first %t"]);
    assert_eq!(summary["failed"], 0, "{summary}");
    assert_eq!(summary["acknowledged"], 1000, "{summary}");
    let (ta, ra) = completed(&a);
    let (tb, rb) = completed(&b);
    assert!(
        ta.len() > 100 && tb.len() > 100,
        "uneven: {} / {}",
        ta.len(),
        tb.len()
    );
    assert_eq!(ta.len() + tb.len(), 1000);
    assert!(
        ra >= ta.len() && rb >= tb.len(),
        "records without the client's real address"
    );

    // The cluster's total through a real Prometheus scraping both hosts: exactly what the
    // client had acknowledged (before host a stops below, so both hosts still answer).
    let acknowledged = summary["acknowledged"].as_u64().unwrap() as f64;
    prometheus.wait_for(
        "the cluster's request total",
        "sum(cserverd_requests_total)",
        |r| r.len() == 1 && r[0].1 == acknowledged,
    );
    // The shipped recording rule, evaluated by the same server on the real series: the load
    // happened within its minute.
    prometheus.wait_for(
        "the shipped recording rule",
        "cserverd:requests:rate1m",
        |r| r.len() == 1 && r[0].1 > 0.0,
    );

    // One host stops mid-run: HAProxy sends everyone to the other; nothing acknowledged is lost.
    let acks = dir.path().join("acks");
    let (a_since, b_since) = (completed_count(&a), completed_count(&b));
    let load = Command::new(CCLIENT)
        .args([
            "--port",
            &proxy.port.to_string(),
            "--json",
            "--timeout",
            "30",
            "--threads",
            "50",
        ])
        .args([
            "--connect-per-request",
            "--duration",
            "4",
            "--message",
            "second %t-%r",
            "--acks",
        ])
        .arg(&acks)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Mid-run, on purpose: both hosts are serving the load when a stops.
    wait_until("the load on both hosts", PATIENCE, || {
        completed_count(&a) >= a_since + 50 && completed_count(&b) >= b_since + 50
    });
    a.stop();
    let b_at_stop = completed_count(&b);
    let (_status, summary) = finish_cclient(load);
    assert!(
        completed_count(&b) > b_at_stop + 50,
        "the load ended before host a was gone, so no failover was tested: {summary}"
    );
    let acked = fs::read_to_string(&acks).unwrap();
    let mut seen: HashMap<String, u32> = HashMap::new();
    for t in completed(&a).0.into_iter().chain(completed(&b).0) {
        *seen.entry(t).or_default() += 1;
    }
    let mut n = 0;
    for text in acked.lines().filter(|l| !l.is_empty()) {
        assert_eq!(
            seen.get(text),
            Some(&1),
            "acknowledged {text:?} is not in exactly one host's log"
        );
        n += 1;
    }
    assert!(n > 100, "{summary}");
    let failed = summary["failed"].as_u64().unwrap();
    eprintln!("failover: {n} acknowledged, {failed} failed while host a stopped");
    assert!(
        failed * 20 < n as u64,
        "too many failures across the failover: {summary}"
    );
}

/// The shipped Prometheus files: the rules and the example config are valid, and the rules'
/// unit tests (alerts firing when they should) pass. Needs no root.
#[test]
fn shipped_prometheus_rules_pass_promtool() {
    if Command::new("promtool").arg("--version").output().is_err() {
        eprintln!(
            "SKIPPED: promtool is missing (Debian package prometheus; make test installs it)"
        );
        return;
    }
    for args in [
        ["check", "rules", "cserverd.rules.yml"],
        ["check", "config", "prometheus.yml"],
        ["test", "rules", "cserverd.rules.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(contrib_prometheus(""))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
