//! The Kubernetes sidecar story (`examples/k8s/`, DESIGN §1.1, §1.7–1.8), proven twice:
//!
//! - offline: the manifests pass `kubernetes-validate --strict -k 1.29.0`, and what a schema cannot
//!   see is asserted on them (a privileged native sidecar with `/dev/fuse` and a Bidirectional mount,
//!   the FUSE path a *subdirectory* of the shared volume, the app non-root through HostToContainer, the
//!   token from a Secret, the headless Service publishing not-ready addresses, Parallel start);
//! - with real containers: podman plays a Pod rendered *here* from the StatefulSet's pod template (the
//!   one source of truth), with the images built by `examples/k8s/stage.sh` + the Containerfiles from
//!   the binary under test, no registry involved.
//!
//! What the render changes, and why (podman 4.3 is not a kubelet): the native sidecar moves to
//! `containers` (podman would run it as a classic init container that never ends); its `postStart`
//! and `startupProbe` are run by the test with `podman exec`, as the kubelet would; the `emptyDir`
//! becomes an rshared bind mount made by the test (this host's `/` is private, so a plain directory
//! cannot carry a Bidirectional mount), the PVC and the Secret become host directories; the pods use
//! the host network, each on its own loopback address with one shared port, and each advertises its
//! pod's DNS name as the manifest says; the sidecar's `/etc/hosts` maps the Service's name to every
//! pod's address (what the headless Service's DNS record answers) and each pod's name to its own
//! (podman ignores `hostAliases` on the host network), so the binary resolves them with the real
//! resolver; `--bootstrap-expect` is the number of pods played; the `fieldRef` env
//! gets literal values. `--cluster-token-file` is kept only when the binary under test has the flag.
//!
//! Everything runs in a private podman store (`--root`/`--runroot`/`--tmpdir` in a temp dir, vfs
//! driver, `CONTAINERS_CONF` with runc): [`Podman`]'s `Drop` removes the pods and images and detaches
//! every mount left under its directory, even when the test fails. Waits are polls under a deadline.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{assert_ok, run_command, BIN};

/// Where the manifests live.
fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/k8s")
}

/// Parses a manifest (YAML) into JSON values.
fn manifest(name: &str) -> Value {
    let path = k8s_dir().join(name);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// The native sidecar of a pod spec: the init container with `restartPolicy: Always`.
fn sidecar(spec: &Value) -> &Value {
    let sidecars: Vec<&Value> = spec["initContainers"]
        .as_array()
        .expect("the pod template has initContainers")
        .iter()
        .filter(|c| c["restartPolicy"] == "Always")
        .collect();
    assert_eq!(
        sidecars.len(),
        1,
        "exactly one native sidecar (an init container with restartPolicy: Always)"
    );
    sidecars[0]
}

/// The sidecar's `lightchain mount` arguments.
fn args(container: &Value) -> Vec<String> {
    container["args"].as_array().expect("args").iter().map(|a| a.as_str().unwrap().to_string()).collect()
}

/// The value of `--flag=value` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Vec<&'a str> {
    args.iter().filter_map(|a| a.strip_prefix(&format!("{name}="))).collect()
}

/// The volumeMount of `container` that holds `path` (the deepest one).
fn volume_mount<'a>(container: &'a Value, path: &str) -> &'a Value {
    let mounts = container["volumeMounts"].as_array().expect("volumeMounts");
    mounts
        .iter()
        .filter(|m| {
            let at = m["mountPath"].as_str().unwrap();
            path == at || path.starts_with(&format!("{}/", at.trim_end_matches('/')))
        })
        .max_by_key(|m| m["mountPath"].as_str().unwrap().len())
        .unwrap_or_else(|| panic!("no volumeMount holds {path}"))
}

/// The volume mounted by `container` at a path that holds `path`, with the pod's definition of it.
fn mount_of<'a>(spec: &'a Value, container: &'a Value, path: &str) -> (&'a Value, &'a Value) {
    let m = volume_mount(container, path);
    let volume = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == m["name"])
        .unwrap_or_else(|| panic!("volume {} is not defined in the pod", m["name"]));
    (m, volume)
}

// ----- offline -----

#[test]
fn manifests_pass_the_kubernetes_1_29_schema_strictly() {
    common::prereq::ensure(common::prereq::Need::KubernetesValidate);
    let mut cmd = Command::new("kubernetes-validate");
    cmd.args(["--strict", "-k", "1.29.0", "statefulset.yaml", "service.yaml"]).current_dir(k8s_dir());
    let run = run_command(cmd, Duration::from_secs(120));
    assert_ok(&run, "kubernetes-validate --strict -k 1.29.0 examples/k8s/*.yaml");
    assert!(!run.1.contains("WARN") && !run.2.contains("WARN"), "warnings: {}{}", run.1, run.2);
}

#[test]
fn manifests_say_what_the_schema_cannot() {
    let sts = manifest("statefulset.yaml");
    let svc = manifest("service.yaml");
    assert_eq!(sts["kind"], "StatefulSet");
    assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel", "the members must start together");
    assert_eq!(svc["kind"], "Service");
    assert_eq!(sts["spec"]["serviceName"], svc["metadata"]["name"], "the StatefulSet names its Service");
    assert_eq!(svc["spec"]["clusterIP"], "None", "the Service is headless");
    assert_eq!(svc["spec"]["publishNotReadyAddresses"], true, "names resolve before the pods are ready");
    let labels = &sts["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_object().expect("the Service has a selector") {
        assert_eq!(&labels[k], v, "the Service selects the StatefulSet's pods");
    }

    let spec = &sts["spec"]["template"]["spec"];
    let side = sidecar(spec);
    assert_eq!(side["securityContext"]["privileged"], true, "FUSE and Bidirectional need privileged");
    let a = args(side);
    assert_eq!(a[0], "mount");
    let mountpoint = a[1].as_str();
    let (shared, volume) = mount_of(spec, side, mountpoint);
    assert!(volume.get("emptyDir").is_some(), "the FUSE mount sits in a shared emptyDir: {volume}");
    assert_eq!(shared["mountPropagation"], "Bidirectional", "the sidecar's mount must reach the pod");
    let volume_root = shared["mountPath"].as_str().unwrap().trim_end_matches('/');
    let rel = mountpoint.strip_prefix(volume_root).unwrap_or("");
    assert!(rel.len() > 1 && rel.starts_with('/'), "{mountpoint} must be a subdirectory of {volume_root}");
    let (_, fuse) = mount_of(spec, side, "/dev/fuse");
    assert_eq!(fuse["hostPath"]["path"], "/dev/fuse", "the sidecar gets /dev/fuse");
    assert!(a.iter().any(|x| x == "--allow-other"), "the app is another user: --allow-other");
    assert!(
        a.iter().any(|x| x == "--release-guard-on-stop"),
        "a clean stop (the pod's end) leaves no mount in the emptyDir: --release-guard-on-stop"
    );

    let token = flag(&a, "--cluster-token-file");
    assert_eq!(token.len(), 1, "one --cluster-token-file");
    let (token_mount, token_volume) = mount_of(spec, side, token[0]);
    assert!(
        token_volume["secret"]["secretName"].is_string(),
        "the token comes from a Secret: {token_volume}"
    );
    assert_eq!(token_mount["readOnly"], true);

    let data = volume_mount(side, flag(&a, "--data")[0]);
    let claims = sts["spec"]["volumeClaimTemplates"].as_array().expect("volumeClaimTemplates");
    assert!(claims.iter().any(|c| c["metadata"]["name"] == data["name"]), "data on a volumeClaimTemplate");

    let replicas = sts["spec"]["replicas"].as_u64().unwrap();
    assert!(flag(&a, "--peer").is_empty(), "no static --peer list: the pods discover each other");
    assert_eq!(flag(&a, "--bootstrap-expect"), [replicas.to_string()], "the first pods found the cluster");
    let service = svc["metadata"]["name"].as_str().unwrap();
    let port = svc["spec"]["ports"][0]["port"].as_u64().unwrap();
    let discover = flag(&a, "--discover-dns");
    assert!(
        discover.len() == 1
            && discover[0].starts_with(&format!("{service}.$(POD_NAMESPACE).svc."))
            && discover[0].ends_with(&format!(":{port}")),
        "the pods are discovered through the headless Service's name and port: {discover:?}"
    );
    let advertise = flag(&a, "--advertise");
    assert!(
        advertise.len() == 1 && advertise[0].starts_with(&format!("$(POD_NAME).{service}.")),
        "each pod advertises its own DNS name: {advertise:?}"
    );

    let probe =
        side["startupProbe"]["exec"]["command"].as_array().expect("an exec startupProbe").last().unwrap();
    let probe = probe.as_str().unwrap();
    assert!(
        probe.contains(&format!("{mountpoint}/.lightchain/status")) && probe.contains("\"ready\": true"),
        "the startupProbe waits for .lightchain/status to say ready: {probe}"
    );

    let peer_port =
        side["ports"].as_array().expect("ports").iter().find(|p| p["name"] == "peer").expect("a peer port")
            ["containerPort"]
            .clone();
    assert_eq!(
        side["readinessProbe"]["grpc"]["port"], peer_port,
        "the readinessProbe asks the gRPC health service on the peer port"
    );

    let apps = spec["containers"].as_array().expect("containers");
    assert!(!apps.is_empty());
    for app in apps {
        let sc = &app["securityContext"];
        assert_eq!(sc["runAsUser"], 1000, "the app is not root");
        assert_eq!(sc["runAsNonRoot"], true);
        let (m, v) = mount_of(spec, app, mountpoint);
        assert_eq!(m["name"], shared["name"], "the app sees the same shared volume");
        assert_eq!(m["mountPropagation"], "HostToContainer", "the sidecar's mount must reach the app");
        assert!(v.get("emptyDir").is_some());
        assert!(app.get("securityContext").and_then(|s| s.get("privileged")).is_none());
    }
}

// ----- real containers -----

/// A private podman: its own store, state and config in a temp dir, cleaned up on drop.
struct Podman {
    /// Canonical path of `_tmp` (as `/proc/self/mountinfo` shows it).
    root: PathBuf,
    /// Owns the directory; removed last.
    _tmp: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        common::prereq::ensure(common::prereq::Need::Containers);
        let tmp = tempfile::Builder::new().prefix("lightchain-k8s-").tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        // crun refuses this kind of host's hybrid cgroups; no CAP_SYS_RESOURCE for podman's default
        // ulimits; no systemd or journald to rely on.
        fs::write(
            root.join("containers.conf"),
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )
        .unwrap();
        Podman { root, _tmp: tmp }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("podman");
        let r = &self.root;
        cmd.env("CONTAINERS_CONF", r.join("containers.conf"))
            .arg("--root")
            .arg(r.join("storage"))
            .arg("--runroot")
            .arg(r.join("run"))
            .arg("--tmpdir")
            .arg(r.join("libpod"))
            .args(["--storage-driver", "vfs", "--events-backend", "file"])
            .args(args);
        cmd
    }

    /// Runs podman; returns (success, stdout, stderr).
    fn try_run(&self, args: &[&str]) -> (bool, String, String) {
        let (status, out, err) = run_command(self.command(args), Duration::from_secs(120));
        (status.success(), out, err)
    }

    /// Runs podman and asserts it succeeded; returns stdout.
    #[track_caller]
    fn run(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.try_run(args);
        assert!(ok, "podman {args:?} failed\nstdout: {out}\nstderr: {err}");
        out
    }

    fn inspect(&self, container: &str, format: &str) -> String {
        self.run(&["inspect", container, "--format", format]).trim().to_string()
    }

    /// Builds the two images of `examples/k8s` from the binary under test, tagged as the manifest
    /// names them (the store is private, so nothing else sees the tags).
    fn build_images(&self, sidecar_image: &str, app_image: &str) {
        let stage = self.root.join("stage");
        let mut cmd = Command::new("bash");
        cmd.arg(k8s_dir().join("stage.sh")).arg(BIN).arg(&stage);
        assert_ok(&run_command(cmd, Duration::from_secs(120)), "examples/k8s/stage.sh");
        for (file, tag, ctx) in
            [("Containerfile", sidecar_image, "lightchain"), ("app.Containerfile", app_image, "app")]
        {
            let file = k8s_dir().join(file);
            let ctx = stage.join(ctx);
            self.run(&["build", "-q", "-f", file.to_str().unwrap(), "-t", tag, ctx.to_str().unwrap()]);
        }
    }

    /// A directory bind-mounted on itself and made rshared: the stand-in for the pod's emptyDir,
    /// which must propagate the sidecar's FUSE mount both ways.
    fn shared_dir(&self, name: &str) -> PathBuf {
        let dir = self.root.join(name);
        fs::create_dir_all(&dir).unwrap();
        let c = common::cpath(&dir);
        let rc =
            unsafe { libc::mount(c.as_ptr(), c.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) };
        assert_eq!(rc, 0, "bind-mount {}: {}", dir.display(), std::io::Error::last_os_error());
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                c.as_ptr(),
                std::ptr::null(),
                libc::MS_SHARED | libc::MS_REC,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "make-rshared {}: {}", dir.display(), std::io::Error::last_os_error());
        dir
    }

    /// Every mountpoint at or under `dir` in this (the host's) mount namespace, deepest first.
    fn mounts_under(dir: &Path) -> Vec<String> {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let prefix = dir.to_str().unwrap().to_string();
        let mut found: Vec<String> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(|m| m.replace("\\040", " ")))
            .filter(|m| *m == prefix || m.starts_with(&format!("{prefix}/")))
            .collect();
        found.sort_by_key(|m| std::cmp::Reverse(m.len()));
        found
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        if thread::panicking() {
            if let (true, out, _) = self.try_run(&["ps", "-a", "--format", "{{.Names}}"]) {
                for name in out.lines().filter(|n| !n.ends_with("-infra")) {
                    let (_, logs, errs) = self.try_run(&["logs", "--tail", "40", name]);
                    eprintln!("===== podman logs {name} =====\n{logs}{errs}");
                }
            }
        }
        let _ = self.try_run(&["pod", "rm", "-a", "-f", "-t", "0"]);
        let _ = self.try_run(&["rm", "-a", "-f", "-t", "0"]);
        let _ = self.try_run(&["rmi", "-a", "-f"]);
        for _ in 0..3 {
            for m in Podman::mounts_under(&self.root) {
                unsafe { libc::umount2(common::cpath(Path::new(&m)).as_ptr(), libc::MNT_DETACH) };
            }
        }
        let left = Podman::mounts_under(&self.root);
        if !left.is_empty() {
            eprintln!("k8s test: mounts left behind under {}: {left:?}", self.root.display());
        }
    }
}

/// Whether the binary under test has `--cluster-token-file` (issue 8's token, on another branch).
fn binary_has_token_flag() -> bool {
    let mut cmd = Command::new(BIN);
    cmd.args(["mount", "--help"]);
    run_command(cmd, Duration::from_secs(30)).1.contains("--cluster-token-file")
}

/// One pod of the rendered StatefulSet, as podman can play it.
struct PodPlan {
    /// Pod name, like the StatefulSet's `NAME-ORDINAL`.
    name: String,
    /// Loopback address this member listens on and advertises.
    addr: String,
    /// `--bootstrap-expect` for this play (the manifest's, or fewer pods).
    expect: usize,
    /// Every pod of the play, by name, with its IP: the Service's name resolves to all of them and
    /// each pod's own DNS name to its IP. The render writes them into the sidecar's `/etc/hosts`,
    /// so the binary resolves the names with the real resolver.
    pods: Vec<(String, String)>,
    /// Host directory standing in for the emptyDir (rshared).
    shared: PathBuf,
    /// Host directory standing in for the PVC.
    data: PathBuf,
    /// Host directory holding the Secret's `token` file, when the binary takes a token.
    token: Option<PathBuf>,
}

/// Renders a Pod from the StatefulSet's template (see the module doc for what changes and why).
/// Returns the pod and the sidecar's postStart command and startupProbe command.
fn render(sts: &Value, plan: &PodPlan) -> (Value, Vec<String>, Vec<String>) {
    let mut spec = sts["spec"]["template"]["spec"].clone();
    let mut side = sidecar(&spec).clone();
    let exec = |v: &Value| -> Vec<String> {
        v["exec"]["command"]
            .as_array()
            .expect("exec command")
            .iter()
            .map(|s| s.as_str().unwrap().into())
            .collect()
    };
    let post_start = exec(&side["lifecycle"]["postStart"]);
    let probe = exec(&side["startupProbe"]);
    let obj = side.as_object_mut().unwrap();
    for key in ["restartPolicy", "startupProbe", "lifecycle", "ports"] {
        obj.remove(key);
    }
    let original = args(&side);
    let service_name = flag(&original, "--discover-dns")[0]
        .rsplit_once(':')
        .unwrap()
        .0
        .replace("$(POD_NAMESPACE)", "default");
    let port = plan.addr.rsplit_once(':').unwrap().1;
    // Each pod advertises its own DNS name, as in the manifest (with this play's port).
    let advertised_host = flag(&original, "--advertise")[0].rsplit_once(':').unwrap().0.to_owned();
    let pod_dns =
        |pod: &str| advertised_host.replace("$(POD_NAME)", pod).replace("$(POD_NAMESPACE)", "default");
    let rendered = ["--listen=", "--advertise=", "--discover-dns=", "--bootstrap-expect="];
    let mut a: Vec<String> = original
        .into_iter()
        .filter(|a| !rendered.iter().any(|p| a.starts_with(p)))
        .filter(|a| plan.token.is_some() || !a.starts_with("--cluster-token-file="))
        .collect();
    a.push(format!("--listen={}", plan.addr));
    a.push(format!("--advertise={}:{port}", pod_dns(&plan.name)));
    a.push(format!("--discover-dns={service_name}:{port}"));
    a.push(format!("--bootstrap-expect={}", plan.expect));
    side["args"] = json!(a);
    let mut containers = vec![side];
    containers.extend(spec["containers"].as_array().unwrap().iter().cloned());
    for c in &mut containers {
        c.as_object_mut().unwrap().remove("ports");
        if let Some(env) = c["env"].as_array_mut() {
            for e in env.iter_mut() {
                let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("metadata.name") => plan.name.clone(),
                    Some("metadata.namespace") => "default".into(),
                    Some(other) => panic!("the render does not know fieldRef {other}"),
                    None => continue,
                };
                *e = json!({ "name": e["name"], "value": value });
            }
        }
    }
    let host = |path: &Path| json!({ "path": path.to_str().unwrap(), "type": "Directory" });
    let mut volumes = Vec::new();
    for v in spec["volumes"].as_array().unwrap() {
        let name = v["name"].clone();
        if v.get("emptyDir").is_some() {
            volumes.push(json!({ "name": name, "hostPath": host(&plan.shared) }));
        } else if v.get("secret").is_some() {
            if let Some(token) = &plan.token {
                volumes.push(json!({ "name": name, "hostPath": host(token) }));
            } else {
                for c in &mut containers {
                    if let Some(m) = c["volumeMounts"].as_array_mut() {
                        m.retain(|m| m["name"] != name);
                    }
                }
            }
        } else {
            volumes.push(v.clone());
        }
    }
    for claim in sts["spec"]["volumeClaimTemplates"].as_array().unwrap() {
        volumes.push(json!({ "name": claim["metadata"]["name"], "hostPath": host(&plan.data) }));
    }
    // What the headless Service's DNS record does: the name resolves to every pod's address. (podman
    // ignores `hostAliases` on the host network, so the sidecar gets an /etc/hosts of its own.)
    let hosts = plan.data.with_extension("hosts");
    let lines: String =
        plan.pods.iter().map(|(pod, ip)| format!("{ip} {service_name}\n{ip} {}\n", pod_dns(pod))).collect();
    fs::write(&hosts, format!("127.0.0.1 localhost\n{lines}")).unwrap();
    volumes.push(
        json!({ "name": "service-dns", "hostPath": { "path": hosts.to_str().unwrap(), "type": "File" } }),
    );
    containers[0]["volumeMounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "service-dns", "mountPath": "/etc/hosts", "readOnly": true }));
    spec["volumes"] = json!(volumes);
    spec["containers"] = json!(containers);
    spec["hostNetwork"] = json!(true);
    spec.as_object_mut().unwrap().remove("initContainers");
    let pod = json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": plan.name }, "spec": spec });
    (pod, post_start, probe)
}

/// A played pod and what the kubelet would do for it.
struct Pod {
    name: String,
    /// The sidecar container's name in podman (`POD-CONTAINER`).
    sidecar: String,
    /// The app container's name in podman.
    app: String,
    post_start: Vec<String>,
    probe: Vec<String>,
    /// The host path of the FUSE mount (inside the rshared stand-in for the emptyDir).
    host_mount: PathBuf,
    data: PathBuf,
}

fn play(podman: &Podman, sts: &Value, plan: PodPlan) -> Pod {
    let (pod, post_start, probe) = render(sts, &plan);
    let file = podman.root.join(format!("{}.yaml", plan.name));
    fs::write(&file, serde_yaml::to_string(&pod).unwrap()).unwrap();
    podman.run(&["kube", "play", file.to_str().unwrap()]);
    let spec = &sts["spec"]["template"]["spec"];
    let side = sidecar(spec);
    let mountpoint = args(side)[1].clone();
    let (shared, _) = mount_of(spec, side, &mountpoint);
    let rel = mountpoint.strip_prefix(shared["mountPath"].as_str().unwrap()).unwrap().trim_start_matches('/');
    Pod {
        sidecar: format!("{}-{}", plan.name, side["name"].as_str().unwrap()),
        app: format!("{}-{}", plan.name, spec["containers"][0]["name"].as_str().unwrap()),
        name: plan.name,
        post_start,
        probe,
        host_mount: plan.shared.join(rel),
        data: plan.data,
    }
}

impl Pod {
    /// What the kubelet does after starting the sidecar: the postStart hook, then the startupProbe
    /// until it succeeds (the app would start only then).
    fn start_like_a_kubelet(&self, podman: &Podman) {
        let mut hook = vec!["exec", self.sidecar.as_str()];
        hook.extend(self.post_start.iter().map(String::as_str));
        podman.run(&hook);
        let mut probe = vec!["exec", self.sidecar.as_str()];
        probe.extend(self.probe.iter().map(String::as_str));
        let deadline = Instant::now() + Duration::from_secs(90);
        while !podman.try_run(&probe).0 {
            assert!(Instant::now() < deadline, "the startupProbe of {} never succeeded", self.name);
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs a busybox script in the app container (as the app's user); returns (ok, stdout, stderr).
    fn app_sh(&self, podman: &Podman, script: &str) -> (bool, String, String) {
        podman.try_run(&["exec", &self.app, "sh", "-c", script])
    }

    /// Every mount at the pod's mountpoint, seen from the host (mountinfo lines, bottom first
    /// as listed).
    fn mounts(&self) -> Vec<String> {
        let want = self.host_mount.to_str().unwrap().replace(' ', "\\040");
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(want.as_str()))
            .map(str::to_string)
            .collect()
    }

    /// The FUSE mounts at the pod's mountpoint, seen from the host.
    fn fuse_mounts(&self) -> Vec<String> {
        self.mounts().into_iter().filter(|l| l.contains(" - fuse")).collect()
    }

    /// Whether the host sees the sidecar's read-only guard at the pod's mountpoint.
    fn guarded(&self) -> bool {
        self.mounts().iter().any(|l| l.contains(&format!(" - tmpfs {} ", common::GUARD_SOURCE)))
    }
}

/// Polls `f` until it returns `Some`, failing after `timeout` with `what`.
#[track_caller]
fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?}: {what}");
        thread::sleep(Duration::from_millis(200));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn images(sts: &Value) -> (String, String) {
    let spec = &sts["spec"]["template"]["spec"];
    (
        sidecar(spec)["image"].as_str().unwrap().to_string(),
        spec["containers"][0]["image"].as_str().unwrap().to_string(),
    )
}

/// Writes a token file for the Secret stand-in, when the binary takes one.
fn token_dir(podman: &Podman) -> Option<PathBuf> {
    if !binary_has_token_flag() {
        eprintln!("k8s test: the binary has no --cluster-token-file yet: the pods run without a token");
        return None;
    }
    let dir = podman.root.join("secret");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("token"), "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n")
        .unwrap();
    Some(dir)
}

#[test]
fn sidecar_serves_a_non_root_app_recovers_from_kill9_and_stops_cleanly() {
    let sts = manifest("statefulset.yaml");
    let podman = Podman::new();
    let (side_image, app_image) = images(&sts);
    podman.build_images(&side_image, &app_image);
    let addr = format!("127.0.0.1:{}", free_port());
    let data = podman.root.join("data-0");
    fs::create_dir_all(&data).unwrap();
    let plan = PodPlan {
        name: "lightchain-0".into(),
        addr: addr.clone(),
        expect: 1,
        pods: vec![("lightchain-0".into(), "127.0.0.1".into())],
        shared: podman.shared_dir("shared-0"),
        data,
        token: token_dir(&podman),
    };
    let pod = play(&podman, &sts, plan);
    pod.start_like_a_kubelet(&podman);

    // The app, as uid 1000, writes and reads through the mount with echo and cat.
    let (ok, out, err) = pod
        .app_sh(&podman, "id -u; echo from-the-app > /shared/lightchain/note && cat /shared/lightchain/note");
    assert!(ok, "the app writes and reads through the mount: {out}{err}");
    assert_eq!(out, "1000\nfrom-the-app\n");
    let note = pod.host_mount.join("note");
    let meta = fs::metadata(&note).expect("the note is visible from the host through the shared volume");
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000), "the app's state is owned by the app's user");
    // The app's own command greets through the mount too.
    let hello = pod.host_mount.join("hello-lightchain-0");
    let greeting = poll(Duration::from_secs(60), "the app's greeting", || fs::read_to_string(&hello).ok());
    assert_eq!(greeting, "hello from lightchain-0\n");
    assert_eq!(fs::metadata(&hello).unwrap().uid(), 1000);

    // kill -9 of the sidecar: the running app sees ENOTCONN.
    let app_started = podman.inspect(&pod.app, "{{.State.StartedAt}}");
    podman.run(&["kill", "-s", "KILL", &pod.sidecar]);
    let err = poll(Duration::from_secs(30), "the app sees the dead mount", || {
        match pod.app_sh(&podman, "cat /shared/lightchain/note") {
            (true, _, _) => None, // not dead yet
            (false, _, err) => Some(err),
        }
    });
    assert!(err.contains("Transport endpoint is not connected"), "ENOTCONN in the app: {err}");
    assert_eq!(pod.fuse_mounts().len(), 1, "the dead FUSE mount stays until a sidecar replaces it");
    assert!(pod.guarded(), "the guard beneath it outlives the sidecar: {:#?}", pod.mounts());
    // What the restart does first, done here from the host so that the window stays open: the
    // dead mount is detached, and the app (HostToContainer) sees the guard, never the emptyDir.
    unsafe { libc::umount2(common::cpath(&pod.host_mount).as_ptr(), libc::MNT_DETACH) };
    assert!(pod.fuse_mounts().is_empty(), "the dead mount is detached: {:#?}", pod.mounts());
    let (ok, out, err) = pod.app_sh(&podman, "echo lost > /shared/lightchain/in-the-window");
    assert!(
        !ok && err.contains("Read-only file system"),
        "EROFS in the app while no sidecar serves: {out}{err}"
    );
    // The kubelet restarts the sidecar: the dead mount is replaced, the same app works again.
    podman.run(&["start", &pod.sidecar]);
    pod.start_like_a_kubelet(&podman);
    let (ok, out, err) = pod.app_sh(&podman, "cat /shared/lightchain/note && echo again > /shared/lightchain/note2 && cat /shared/lightchain/note2");
    assert!(ok, "the same app container works after the sidecar's restart: {out}{err}");
    assert_eq!(out, "from-the-app\nagain\n");
    assert_eq!(
        pod.fuse_mounts().len(),
        1,
        "the dead mount is replaced, not stacked: {:#?}",
        pod.fuse_mounts()
    );
    assert_eq!(
        podman.inspect(&pod.app, "{{.State.StartedAt}} {{.State.Status}}"),
        format!("{app_started} running")
    );

    // The same, with the restart left to the pod's restartPolicy (the process killed from outside).
    let restarts = podman.inspect(&pod.sidecar, "{{.RestartCount}}");
    let pid: i32 = podman.inspect(&pod.sidecar, "{{.State.Pid}}").parse().unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    poll(Duration::from_secs(60), "podman restarts the killed sidecar", || {
        (podman.inspect(&pod.sidecar, "{{.RestartCount}}") != restarts).then_some(())
    });
    pod.start_like_a_kubelet(&podman);
    let (ok, out, err) = pod.app_sh(&podman, "cat /shared/lightchain/note2");
    assert!(ok && out == "again\n", "the app works after the automatic restart: {out}{err}");
    assert_eq!(podman.inspect(&pod.app, "{{.State.StartedAt}}"), app_started, "the app never restarted");

    // podman pod stop: SIGTERM, then SIGKILL after the grace period. lightchain exits 0 (so within
    // the grace period) and leaves no mount behind; the app traps TERM and exits 0 too.
    let grace =
        sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap().to_string();
    podman.run(&["pod", "stop", "-t", &grace, &pod.name]);
    assert_eq!(podman.inspect(&pod.sidecar, "{{.State.ExitCode}}"), "0", "lightchain exits 0 on SIGTERM");
    assert_eq!(podman.inspect(&pod.app, "{{.State.ExitCode}}"), "0");
    assert!(pod.mounts().is_empty(), "no mount left behind, the guard neither: {:#?}", pod.mounts());
    let beneath = fs::read_dir(&pod.host_mount).unwrap().count();
    assert_eq!(beneath, 0, "no write ever landed in the emptyDir beneath the mounts");
    let mut verify = Command::new(BIN);
    verify.arg("verify").arg("--data").arg(&pod.data);
    assert_ok(&run_command(verify, Duration::from_secs(60)), "lightchain verify on the pod's data volume");
    podman.run(&["pod", "rm", &pod.name]);
}

#[test]
fn three_sidecar_pods_form_one_cluster_and_see_each_others_writes() {
    let sts = manifest("statefulset.yaml");
    let podman = Podman::new();
    let (side_image, app_image) = images(&sts);
    podman.build_images(&side_image, &app_image);
    let token = token_dir(&podman);
    // One port, one loopback address per pod: what the Service's name and port give a pod.
    let (ips, port) = common::free_loopback_ips_and_port(3);
    let addrs: Vec<String> = ips.iter().map(|ip| format!("{ip}:{port}")).collect();
    let pods: Vec<Pod> = (0..3)
        .map(|i| {
            let data = podman.root.join(format!("data-{i}"));
            fs::create_dir_all(&data).unwrap();
            let plan = PodPlan {
                name: format!("lightchain-{i}"),
                addr: addrs[i].clone(),
                expect: 3,
                pods: (0..3).map(|j| (format!("lightchain-{j}"), ips[j].clone())).collect(),
                shared: podman.shared_dir(&format!("shared-{i}")),
                data,
                token: token.clone(),
            };
            play(&podman, &sts, plan)
        })
        .collect();
    for pod in &pods {
        pod.start_like_a_kubelet(&podman);
    }
    // One cluster: every member names the same three members and the same leader.
    let views: Vec<Value> = pods
        .iter()
        .map(|p| serde_json::from_slice(&fs::read(p.host_mount.join(".lightchain/status")).unwrap()).unwrap())
        .collect();
    for v in &views {
        assert_eq!(v["members"].as_array().map(Vec::len), Some(3), "three members: {v}");
        // Members know each other by their pods' DNS names, not by addresses that change.
        for m in v["members"].as_array().unwrap() {
            let addr = m["addr"].as_str().unwrap();
            assert!(
                addr.starts_with("lightchain-")
                    && addr.ends_with(&format!(".lightchain.default.svc.cluster.local:{port}")),
                "a member by its pod's DNS name: {addr}"
            );
        }
    }
    poll(Duration::from_secs(30), "one leader for all", || {
        let leaders: Vec<Value> = pods
            .iter()
            .map(|p| {
                serde_json::from_slice::<Value>(&fs::read(p.host_mount.join(".lightchain/status")).unwrap())
                    .unwrap()["leader"]
                    .clone()
            })
            .collect();
        (leaders.iter().all(|l| *l == leaders[0] && !l.is_null())).then_some(())
    });
    // Each app writes; every app reads every write.
    for (i, pod) in pods.iter().enumerate() {
        let (ok, out, err) =
            pod.app_sh(&podman, &format!("echo written-by-{i} > /shared/lightchain/from-{i}"));
        assert!(ok, "app {i} writes: {out}{err}");
    }
    for (j, pod) in pods.iter().enumerate() {
        let script = "cat /shared/lightchain/from-0 /shared/lightchain/from-1 /shared/lightchain/from-2";
        let out = poll(Duration::from_secs(30), "every write visible in every pod", || {
            let (ok, out, _) = pod.app_sh(&podman, script);
            ok.then_some(out)
        });
        assert_eq!(out, "written-by-0\nwritten-by-1\nwritten-by-2\n", "pod {j} sees every pod's write");
    }
    for pod in &pods {
        podman.run(&["pod", "stop", "-t", "30", &pod.name]);
        assert_eq!(podman.inspect(&pod.sidecar, "{{.State.ExitCode}}"), "0", "{} exits 0", pod.name);
        assert!(pod.mounts().is_empty(), "no mount left behind by {}: {:#?}", pod.name, pod.mounts());
    }
}
