//! Image releases on hosts (issue 31): two environments placed on the same three hosts (network
//! namespaces the test makes, netns.rs, each running its own `shipgate agent`, joined as fleet.rs
//! joins them) run an OCI image built here with umoci (images.rs). A host is sent the blobs of
//! an image it lacks (layers, config, manifest), once each and by digest, and unpacks the rootfs
//! itself. What each agent received is read from its own record, `blobs.jsonl` in its data dir:
//! one line per blob that arrived.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::fleet::Agents;
use crate::helpers::{TestServer, free_port, http_get, spawn_server};
use crate::images::{build_images, register_image, runnable};
use crate::netns::Hosts;

/// Testing, then production, both on web-1, web-2 and web-3, each on a port of its own there.
fn config(hosts: &Hosts, testing: u16, production: u16) -> String {
    format!(
        "[server]\nlisten = \"{}:{}\"\ndata_dir = \"data\"\n\n\
         [apps.web]\nhealth = \"/\"\n\n\
         [environments.testing]\nlisten = \"0.0.0.0:{testing}\"\nhosts = [\"web-1\", \"web-2\", \"web-3\"]\n\n\
         [environments.production]\nafter = \"testing\"\nlisten = \"0.0.0.0:{production}\"\nhosts = [\"web-1\", \"web-2\", \"web-3\"]\n",
        hosts.root_addr,
        free_port()
    )
}

/// The blobs of the image tagged `tag` in `layout`: its layers (lowest first), its config and
/// its manifest, by digest.
fn blobs_of(layout: &Path, tag: &str) -> Vec<String> {
    let read =
        |path: &Path| -> Value { serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap() };
    let index = read(&layout.join("index.json"));
    let manifest = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let m = read(
        &layout
            .join("blobs/sha256")
            .join(manifest.trim_start_matches("sha256:")),
    );
    let mut blobs: Vec<String> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    blobs.push(m["config"]["digest"].as_str().unwrap().to_owned());
    blobs.push(manifest);
    blobs
}

/// The digests host `dir`'s agent received, in the order they arrived, with what became of
/// each (`stored`, or `already_held` for a blob sent twice).
fn received(dir: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join(shipgate_agent::BLOBS_FILE))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["digest"].as_str().unwrap().to_owned(),
                v["receipt"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// How many times each digest was received.
fn counted(receipts: &[(String, String)]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (digest, _) in receipts {
        *counts.entry(digest.clone()).or_insert(0) += 1;
    }
    counts
}

/// What `GET /version` answers through `env`'s address on every host (`port` on each).
fn pages(hosts: &Hosts, port: u16) -> Vec<Option<String>> {
    hosts
        .hosts
        .iter()
        .map(|(_, addr)| {
            hosts.assert_routed(addr);
            http_get(&format!("http://{addr}:{port}/version"), None)
                .filter(|r| r.status == 200)
                .map(|r| r.body.trim().to_owned())
        })
        .collect()
}

fn register(s: &TestServer, layout: &Path, version: &str) {
    register_image(s, version, &format!("oci:{}:{version}", layout.display()));
}

#[test]
fn an_image_runs_on_three_hosts_each_sent_every_blob_once_and_the_shared_base_layer_never_again() {
    if !runnable("image_hosts") {
        return;
    }
    let hosts = Hosts::make(3);
    let (testing, production) = (free_port(), free_port());
    let s = spawn_server(&config(&hosts, testing, production));
    let agents = Agents::join_machines(&hosts, &s);
    let layout = build_images(s.dir.path(), &["1.0.0", "1.1.0"]);
    let first = blobs_of(&layout, "1.0.0");
    let second = blobs_of(&layout, "1.1.0");
    let base = first[0].clone();
    assert_eq!(second[0], base, "1.1.0 is built on 1.0.0's base layer");
    assert_eq!((first.len(), second.len()), (4, 4), "{first:?} {second:?}");

    // 1.0.0 into testing: every host is sent its four blobs, once, and serves it.
    register(&s, &layout, "1.0.0");
    s.ok(&["promote", "web@1.0.0", "--to", "testing", "--wait"]);
    assert_eq!(pages(&hosts, testing), vec![Some("1.0.0".to_owned()); 3]);
    let manifest_hex = first[3].trim_start_matches("sha256:").to_owned();
    for (n, dir) in agents.dirs.iter().enumerate() {
        let got = received(dir);
        let mut digests: Vec<String> = got.iter().map(|(d, _)| d.clone()).collect();
        digests.sort();
        let mut expected = first.clone();
        expected.sort();
        assert_eq!(digests, expected, "web-{}: each blob of 1.0.0 once", n + 1);
        assert!(
            got.iter().all(|(_, r)| r == "stored"),
            "web-{}: {got:?}",
            n + 1
        );
        // The rootfs was unpacked there, from the host's own copies.
        assert!(
            dir.join("releases")
                .join(&manifest_hex)
                .join("rootfs/bin/busybox")
                .is_file(),
            "web-{}: the image's rootfs is on the host",
            n + 1
        );
    }

    let after_testing: Vec<usize> = agents.dirs.iter().map(|d| received(d).len()).collect();

    // 1.0.0 into production, on the same hosts: they lack nothing, and are sent nothing.
    s.ok(&["promote", "web@1.0.0", "--to", "production", "--wait"]);
    assert_eq!(pages(&hosts, production), vec![Some("1.0.0".to_owned()); 3]);
    let after_production: Vec<usize> = agents.dirs.iter().map(|d| received(d).len()).collect();
    assert_eq!(after_production, after_testing, "nothing more was sent");

    // 1.1.0 into testing: its own layer, config and manifest are sent; the base layer is not.
    register(&s, &layout, "1.1.0");
    s.ok(&["promote", "web@1.1.0", "--to", "testing", "--wait"]);
    assert_eq!(pages(&hosts, testing), vec![Some("1.1.0".to_owned()); 3]);
    assert_eq!(pages(&hosts, production), vec![Some("1.0.0".to_owned()); 3]);
    for (n, dir) in agents.dirs.iter().enumerate() {
        let got = received(dir);
        let counts = counted(&got);
        assert_eq!(
            counts.get(&base),
            Some(&1),
            "web-{}: the base layer once: {got:?}",
            n + 1
        );
        assert!(
            counts.values().all(|c| *c == 1),
            "web-{}: no blob twice: {got:?}",
            n + 1
        );
        let new: Vec<&String> = got[4..].iter().map(|(d, _)| d).collect();
        assert_eq!(
            new,
            second[1..].iter().collect::<Vec<_>>(),
            "web-{}: 1.1.0's own layer, then its config, then its manifest",
            n + 1
        );
        let kept = std::fs::read_dir(dir.join("layers/sha256"))
            .unwrap()
            .count();
        assert_eq!(kept, 7, "web-{}: seven blobs kept for two images", n + 1);
        eprintln!(
            "image_hosts: web-{} received {} blobs for 1.0.0 (testing), {} for 1.0.0 (production), {} for 1.1.0 (testing); the base layer {} time(s)",
            n + 1,
            after_testing[n],
            after_production[n] - after_testing[n],
            got.len() - after_production[n],
            counts[&base]
        );
    }
    drop(agents);
}
