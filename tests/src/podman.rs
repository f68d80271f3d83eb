//! Pods run by podman from Kubernetes manifests (`podman kube play`), with the images
//! `scripts/images` built, in a network namespace the test made: podman's bridge, its NAT rules
//! and its listeners all live inside that namespace, never on the host's network.

use std::path::{Path, PathBuf};
use std::process::Command;

/// podman, configured by `scripts/containers-env` (a private store under `.tools/containers`).
#[derive(Debug)]
pub struct Podman {
    netns: String,
    root: PathBuf,
    /// What to remove on drop: (what, name) for `podman <what> rm`.
    created: std::cell::RefCell<Vec<(&'static str, String)>>,
}

/// Why podman tests cannot run here.
pub fn missing_prerequisites(images: &[&str]) -> Option<String> {
    let root = containers_root();
    if !root.join("containers.conf").exists() {
        return Some("no container store: run scripts/images first".to_string());
    }
    for image in images {
        let exists = Command::new("podman")
            .envs(env(&root))
            .args(["image", "exists", image])
            .status()
            .is_ok_and(|s| s.success());
        if !exists {
            return Some(format!(
                "image {image} is missing: run scripts/images first"
            ));
        }
    }
    None
}

fn containers_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/containers")
}

fn env(root: &Path) -> [(&'static str, PathBuf); 3] {
    [
        ("CONTAINERS_CONF", root.join("containers.conf")),
        ("CONTAINERS_STORAGE_CONF", root.join("storage.conf")),
        ("TMPDIR", root.join("tmp")),
    ]
}

impl Podman {
    /// podman acting inside the network namespace `netns` (as `ip netns` names it).
    pub fn in_netns(netns: &str) -> Self {
        Self {
            netns: netns.to_string(),
            root: containers_root(),
            created: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// Runs podman with `args`; its stdout, or a panic with its stderr.
    pub fn run(&self, args: &[&str]) -> String {
        // nsenter, not `ip netns exec`: that remounts /sys, hiding the cgroup tree podman needs.
        let output = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.netns))
            .arg("podman")
            .args(args)
            .envs(env(&self.root))
            .output()
            .expect("podman runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "podman {args:?} failed:\n{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    /// A bridge network for the pods; returns its gateway, where the node's services listen.
    pub fn network(&self, name: &str, subnet: &str) -> String {
        self.run(&["network", "create", "--subnet", subnet, name]);
        self.created
            .borrow_mut()
            .push(("network", name.to_string()));
        self.run(&[
            "network",
            "inspect",
            name,
            "--format",
            "{{range .Subnets}}{{.Gateway}}{{end}}",
        ])
        .trim()
        .to_string()
    }

    /// A secret `kube play` mounts where a pod's volume names it (`manifest` is a Kubernetes
    /// Secret, as podman reads it).
    pub fn secret(&self, name: &str, manifest: &Path) {
        self.run(&["secret", "create", name, manifest.to_str().unwrap()]);
        let mut created = self.created.borrow_mut();
        created.push(("secret", name.to_string()));
        // kube play keeps the secret's files in a volume of the same name.
        created.push(("volume", name.to_string()));
    }

    /// Plays a pod manifest on `network`; the pod is removed on drop.
    pub fn play(&self, pod: &str, manifest: &Path, network: &str) {
        let mut created = self.created.borrow_mut();
        created.push(("pod", pod.to_string()));
        // podman 4.3 makes each emptyDir a named volume, shared by the pods that name it.
        created.push(("emptydir", "weft-init-run".to_string()));
        drop(created);
        self.run(&[
            "kube",
            "play",
            "--network",
            network,
            manifest.to_str().unwrap(),
        ]);
    }

    /// A container's IP address on its pod's network.
    pub fn ip(&self, container: &str) -> String {
        self.run(&[
            "inspect",
            container,
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        ])
        .trim()
        .to_string()
    }

    /// A container's state (`running`, `exited`…) and exit code.
    pub fn state(&self, container: &str) -> (String, i32) {
        let out = self.run(&[
            "inspect",
            container,
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
        ]);
        let (status, code) = out.trim().split_once(' ').unwrap();
        (status.to_string(), code.parse().unwrap())
    }

    /// A container's log.
    pub fn logs(&self, container: &str) -> String {
        let output = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.netns))
            .args(["podman", "logs", container])
            .envs(env(&self.root))
            .output()
            .expect("podman runs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    /// The PID of a container's process, to enter its namespaces.
    pub fn pid(&self, container: &str) -> u32 {
        self.run(&["inspect", container, "--format", "{{.State.Pid}}"])
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let created = std::mem::take(&mut *self.created.borrow_mut());
        // Pods first: they hold the secrets' volumes and the network.
        let order = ["pod", "volume", "emptydir", "secret", "network"];
        for what in order {
            for (kind, name) in created.iter().filter(|(kind, _)| *kind == what) {
                // An emptyDir volume in use by another test's pod stays (no -f).
                let what = if *kind == "emptydir" { "volume" } else { kind };
                let mut args = vec![what, "rm"];
                match *kind {
                    "pod" => args.extend(["-f", "-t", "0"]),
                    "volume" | "network" => args.push("-f"),
                    _ => {}
                }
                args.push(name);
                let _ = Command::new("nsenter")
                    .arg(format!("--net=/var/run/netns/{}", self.netns))
                    .arg("podman")
                    .args(&args)
                    .envs(env(&self.root))
                    .output();
            }
        }
    }
}
