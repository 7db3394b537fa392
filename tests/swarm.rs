//! The Docker Swarm stack (docker/stack.yaml): the proxy discovers `tasks.target`, and the
//! target service is scaled 3 → 6 → 2 under a steady request loop without a failed request,
//! every replica serving. Skipped with a notice where Docker or `docker swarm init` is not
//! available, required under CI=true. The swarm is left as it was found.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker").args(args).output().map_err(|e| format!("docker: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match out.status.success() {
        true => Ok(text),
        false => Err(format!("docker {}: {}{}", args.join(" "), text, String::from_utf8_lossy(&out.stderr))),
    }
}

fn skip(why: &str) {
    assert!(!common::in_ci(), "CI=true: {why}");
    eprintln!("NOTICE: {why}; the Swarm test is skipped");
}

/// Removes the stack and the images the test tagged, and leaves the swarm (with the bridge
/// network joining it made) if the test joined it: on success and on a failed assertion alike.
struct Cleanup {
    stack: String,
    tag: String,
    joined: bool,
    bridge_existed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = docker(&["stack", "rm", &self.stack]);
        let filter = format!("label=com.docker.stack.namespace={}", self.stack);
        let deadline = Instant::now() + Duration::from_secs(60);
        // The stack's containers and network go a moment after its services.
        while Instant::now() < deadline {
            let left = docker(&["ps", "-aq", "--filter", &filter]).unwrap_or_default()
                + &docker(&["network", "ls", "-q", "--filter", &filter]).unwrap_or_default();
            if left.trim().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        for image in ["ringproxy", "ringproxy-target"] {
            let _ = docker(&["image", "rm", &format!("{image}:{}", self.tag)]);
        }
        if self.joined {
            let _ = docker(&["swarm", "leave", "--force"]);
            if !self.bridge_existed {
                let _ = docker(&["network", "rm", "docker_gwbridge"]);
            }
        }
    }
}

/// When a request ended, and the replica that answered it or why it failed.
type Outcome = (Instant, Result<String, String>);

/// One GET on a fresh connection: the target that answered, or why it failed.
fn get(port: u16) -> Result<String, String> {
    let mut client = common::Client::try_connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))?;
    let r = client.try_request("GET", "/", &[], b"")?;
    match r.status {
        200 => Ok(r.target().to_owned()),
        s => Err(format!("status {s}")),
    }
}

#[test]
fn scaling_the_swarm_stack_3_6_2_under_load_loses_nothing_and_every_replica_serves() {
    let state = match docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]) {
        Ok(state) => state.trim().to_owned(),
        Err(e) => return skip(&format!("no Docker engine answers ({e})")),
    };
    let joined = state == "inactive";
    let bridge_existed = docker(&["network", "inspect", "docker_gwbridge"]).is_ok();
    if joined {
        if let Err(e) = docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]) {
            return skip(&format!("`docker swarm init` was refused ({e})"));
        }
    } else if state != "active" {
        return skip(&format!("this engine's swarm is {state}"));
    }
    let stack = format!("rpswarm{}", std::process::id());
    let tag = format!("swarmtest{}", std::process::id());
    let _cleanup = Cleanup { stack: stack.clone(), tag: tag.clone(), joined, bridge_existed };

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let built = Command::new(root.join("docker/build.sh")).status().expect("docker/build.sh");
    assert!(built.success(), "docker/build.sh failed");
    for (file, image) in [("Dockerfile.proxy", "ringproxy"), ("Dockerfile.target", "ringproxy-target")] {
        let (dockerfile, context) = (root.join("docker").join(file), root.join("docker"));
        let image = format!("{image}:{tag}");
        docker(&["build", "-q", "-f", &dockerfile.to_string_lossy(), "-t", &image, &context.to_string_lossy()])
            .expect("build the image");
    }
    let (port, admin) = (common::closed_port(), common::closed_port());
    let deployed = Command::new("docker")
        .args(["stack", "deploy", "-c"])
        .arg(root.join("docker/stack.yaml"))
        .args(["--resolve-image", "never", &stack])
        .env("RINGPROXY_PORT", port.to_string())
        .env("RINGPROXY_ADMIN_PORT", admin.to_string())
        .env("RINGPROXY_TAG", &tag)
        .output()
        .expect("docker stack deploy");
    assert!(deployed.status.success(), "{}", String::from_utf8_lossy(&deployed.stderr));
    common::eventually(Duration::from_secs(90), "the stack to answer", || get(port).ok());

    let stop = Arc::new(AtomicBool::new(false));
    let served: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let loader = {
        let (stop, served) = (stop.clone(), served.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(180);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let result = get(port);
                served.lock().expect("served").push((Instant::now(), result));
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let names_since = |since: Instant| -> BTreeMap<String, usize> {
        let mut names = BTreeMap::new();
        for (at, r) in served.lock().expect("served").iter() {
            if let (true, Ok(name)) = (*at >= since, r) {
                *names.entry(name.clone()).or_insert(0) += 1;
            }
        }
        names
    };
    let service = format!("{stack}_target");
    let scale = |n: usize| docker(&["service", "scale", &format!("{service}={n}"), "--detach=true"]).expect("scale");

    let start = Instant::now();
    common::eventually(Duration::from_secs(30), "3 replicas serving", || (names_since(start).len() >= 3).then_some(()));
    let up = Instant::now();
    scale(6);
    common::eventually(Duration::from_secs(60), "6 replicas serving", || (names_since(up).len() >= 6).then_some(()));
    println!("scaled 3 -> 6: every new replica served within {:?}", up.elapsed());
    let down = Instant::now();
    scale(2);
    common::eventually(Duration::from_secs(60), "only 2 replicas serving", || {
        let recent = names_since(Instant::now() - Duration::from_secs(2));
        (down.elapsed() > Duration::from_secs(3) && recent.len() == 2).then_some(())
    });
    println!("scaled 6 -> 2: the removed replicas stopped serving within {:?}", down.elapsed());
    stop.store(true, Ordering::Relaxed);
    loader.join().expect("loader");

    let names = names_since(start);
    let all = served.lock().expect("served");
    let failed: Vec<&String> = all.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
    println!("{} requests, {} failed, {} replicas served: {names:?}", all.len(), failed.len(), names.len());
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), all.len());
    assert!(names.len() >= 6, "every replica served: {names:?}");
}
