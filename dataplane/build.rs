//! Records the git commit the build came from in `TETHER_COMMIT` (`tether version`,
//! `tether_build_info`): from the environment when set, else `git rev-parse`, else `unknown`.

fn main() {
    println!("cargo:rerun-if-env-changed=TETHER_COMMIT");
    // The checked-out commit moves with HEAD and with the branch it names (not with the
    // index: staging a file must not rebuild the workspace).
    let mut watched = vec!["../.git/HEAD".to_owned(), "../.git/packed-refs".to_owned()];
    if let Ok(head) = std::fs::read_to_string("../.git/HEAD")
        && let Some(branch) = head.trim().strip_prefix("ref: ")
    {
        watched.push(format!("../.git/{branch}"));
    }
    for f in watched {
        if std::path::Path::new(&f).exists() {
            println!("cargo:rerun-if-changed={f}");
        }
    }
    let commit = std::env::var("TETHER_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let out = std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
                .filter(|c| !c.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=TETHER_COMMIT={commit}");
}
