//! `tether explain` through the real binary: files, keys, formats, errors and exit codes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tether_controlplane::declarative;
use tether_dataplane::config::AdminHealth;
use tether_dataplane::director::{BackendId, HealthView, Key, SelectOpts};

const FILE: &str = r#"
backends:
  - name: b0
    address: 127.0.0.1:19000
  - name: b1
    address: "[::1]:19001"
  - name: b2
    address: 127.0.0.1:19002
    admin_health: SICK_B2
  - name: b3
    address: backend-3.example:19003
directors:
  - name: sh
    shard: { algorithm: varnish, replicas: 67 }
    members:
      - backend: b0
      - backend: b1
        weight: 2
        ident: node-1.example:8080
      - backend: b2
      - backend: b3
  - name: bal
    shard: { algorithm: balanced }
    members: [{ backend: b0 }, { backend: b1 }, { backend: b2 }, { backend: b3 }]
  - name: rr
    round_robin: {}
    members: [{ backend: b0 }, { director: sh }]
"#;

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().expect("tempdir"))
    }
    fn write(&self, name: &str, body: &str) -> PathBuf {
        let p = self.0.path().join(name);
        std::fs::write(&p, body).expect("write");
        p
    }
}

fn file(b2: &str) -> String {
    FILE.replace("SICK_B2", b2)
}

fn tether(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tether"))
        .args(args)
        .output()
        .expect("run tether")
}

fn csv(path: &Path, director: &str, keys: &Path) -> Vec<(String, String)> {
    let out = tether(&[
        "explain",
        "-f",
        path.to_str().expect("path"),
        "--director",
        director,
        "--format",
        "csv",
        "--keys",
        keys.to_str().expect("path"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .lines()
        .map(|l| {
            let (k, b) = l.rsplit_once(',').expect("key,backend");
            (k.to_owned(), b.to_owned())
        })
        .collect()
}

struct Admin<'a>(&'a declarative::Loaded);

impl HealthView for Admin<'_> {
    fn is_healthy(&self, b: BackendId) -> bool {
        self.0.config.backends[b as usize].admin_health != AdminHealth::Sick
    }
}

#[test]
fn csv_for_a_key_file_matches_the_library_and_sick_moves_only_its_keys() {
    let dir = Dir::new();
    let healthy = dir.write("healthy.yaml", &file("auto"));
    let sick = dir.write("sick.yaml", &file("sick"));
    let keys: Vec<String> = (0..1000).map(|i| format!("session-{i}")).collect();
    let key_file = dir.write("keys.txt", &keys.join("\n"));
    for director in ["sh", "bal"] {
        let before = csv(&healthy, director, &key_file);
        assert_eq!(before.len(), 1000);
        let loaded = declarative::load(&file("auto")).expect("load");
        let d = loaded.directors.id(director).expect("director");
        for (k, b) in &before {
            let want = loaded
                .directors
                .select(d, &Key::str(k), SelectOpts::default(), &Admin(&loaded))
                .expect("select")
                .map(|b| loaded.directors.backend_name(b).to_owned());
            assert_eq!(Some(b.clone()), want, "{director} {k}");
        }
        let after = csv(&sick, director, &key_file);
        let mut moved = 0;
        for ((k, a), (_, b)) in before.iter().zip(&after) {
            assert_ne!(b, "b2", "{director} {k}: sick b2 still chosen");
            if a != b {
                assert_eq!(
                    a, "b2",
                    "{director} {k}: moved although its backend was healthy"
                );
                moved += 1;
            }
        }
        assert!(moved > 100, "{director}: only {moved} keys were on b2");
    }
}

#[test]
fn text_lists_alternates_and_marks_sick_members() {
    let dir = Dir::new();
    let f = dir.write("f.yaml", &file("sick"));
    let out = tether(&[
        "explain",
        "-f",
        f.to_str().expect("path"),
        "--director",
        "sh",
        "user-0",
        "user-1",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    for l in lines {
        let cols: Vec<&str> = l.split('\t').collect();
        assert_eq!(cols.len(), 3, "{l}");
        assert!(cols[2].starts_with("alternates: "), "{l}");
        // b2 is sick: never chosen, marked among the alternates.
        assert_ne!(cols[1], "b2");
        assert!(cols[2].contains("b2 (sick)"), "{l}");
        assert!(
            !cols[2].contains(cols[1]),
            "the pick is not its own alternate: {l}"
        );
    }
}

#[test]
fn no_available_backend_is_an_empty_csv_field() {
    let dir = Dir::new();
    let body = "backends:\n  - name: a\n    address: 127.0.0.1:1\n    admin_health: sick\ndirectors:\n  - name: d\n    shard: {}\n    members: [{ backend: a }]\n";
    let f = dir.write("f.yaml", body);
    let out = tether(&[
        "explain",
        "-f",
        f.to_str().expect("path"),
        "--director",
        "d",
        "--format",
        "csv",
        "k1",
        "k,2",
    ]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).expect("utf8"),
        "k1,\n\"k,2\",\n"
    );
}

#[test]
fn integer_and_ip_keys() {
    let dir = Dir::new();
    let f = dir.write("f.yaml", &file("auto"));
    let p = f.to_str().expect("path");
    let loaded = declarative::load(&file("auto")).expect("load");
    let d = loaded.directors.id("sh").expect("director");
    let want = |k: Key<'_>| {
        loaded
            .directors
            .select(d, &k, SelectOpts::default(), &Admin(&loaded))
            .expect("select")
            .map(|b| loaded.directors.backend_name(b).to_owned())
            .expect("some")
    };
    let out = tether(&[
        "explain",
        "-f",
        p,
        "--director",
        "sh",
        "--format",
        "csv",
        "--key-type",
        "int",
        "0",
        "4294967295",
    ]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).expect("utf8"),
        format!(
            "0,{}\n4294967295,{}\n",
            want(Key::int(0)),
            want(Key::int(4_294_967_295))
        )
    );
    let out = tether(&[
        "explain",
        "-f",
        p,
        "--director",
        "sh",
        "--format",
        "csv",
        "--key-type",
        "ip",
        "192.0.2.1",
    ]);
    assert!(out.status.success());
    let ip = "192.0.2.1".parse().expect("ip");
    assert_eq!(
        String::from_utf8(out.stdout).expect("utf8"),
        format!("192.0.2.1,{}\n", want(Key::ip(ip)))
    );
    // Beyond 32 bits: the varnish algorithm refuses, like Varnish's by=KEY.
    let out = tether(&[
        "explain",
        "-f",
        p,
        "--director",
        "sh",
        "--key-type",
        "int",
        "4294967296",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("out of range"));
    let out = tether(&[
        "explain",
        "-f",
        p,
        "--director",
        "sh",
        "--key-type",
        "int",
        "twelve",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bad_input_exits_2_naming_the_field() {
    let dir = Dir::new();
    let cases = [
        (
            file("auto").replace("weight: 2", "weight: heavy"),
            "directors[0].members[1].weight",
            Some("at line 18 column 17"),
        ),
        (
            file("auto").replace("127.0.0.1:19002", "127.0.0.1"),
            "backends[2].address",
            None,
        ),
        (
            file("auto").replace("admin_health: auto", "admin_health: poorly"),
            "backends[2].admin_health",
            Some("line"),
        ),
        (
            file("auto").replace("{ director: sh }", "{ director: ghost }"),
            "directors[2].members[1].director",
            None,
        ),
        (
            file("auto").replace("algorithm: balanced", "algorithm: maglev"),
            "directors[1].shard.algorithm",
            Some("line"),
        ),
    ];
    for (i, (body, field, line)) in cases.iter().enumerate() {
        let f = dir.write(&format!("bad{i}.yaml"), body);
        let out = tether(&[
            "explain",
            "-f",
            f.to_str().expect("path"),
            "--director",
            "sh",
            "x",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(field), "{field} not in: {err}");
        if let Some(l) = line {
            assert!(err.contains(l), "{l} not in: {err}");
        }
        assert!(out.stdout.is_empty());
    }
    let f = dir.write("ok.yaml", &file("auto"));
    let out = tether(&[
        "explain",
        "-f",
        f.to_str().expect("path"),
        "--director",
        "nope",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no director named \"nope\""));
    let out = tether(&[
        "explain",
        "-f",
        "/nonexistent/file.yaml",
        "--director",
        "sh",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = tether(&[
        "explain",
        "-f",
        f.to_str().expect("path"),
        "--director",
        "sh",
    ]);
    assert_eq!(out.status.code(), Some(2), "keys are required");
}
