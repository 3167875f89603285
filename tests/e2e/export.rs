//! A repository written with Git's objects comes back out as a bare Git repository that `git`
//! judges: `git fsck --strict` accepts it, `git log` walks it, `git clone` checks it out.

use crate::cluster::{stdout, TestCluster};
use std::path::Path;
use std::process::{Command, Stdio};

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "cohort")
        .env("GIT_AUTHOR_EMAIL", "cohort@example.com")
        .env("GIT_COMMITTER_NAME", "cohort")
        .env("GIT_COMMITTER_EMAIL", "cohort@example.com")
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
        .stdin(Stdio::null())
        .output()
        .expect("git runs");
    assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn an_exported_repository_is_one_git_accepts() {
    // A small history made by git itself: two commits, a subdirectory, a tag.
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir_all(src.join("docs")).unwrap();
    git(&src, &["init", "-q", "-b", "main"]);
    std::fs::write(src.join("README"), "hello\n").unwrap();
    std::fs::write(src.join("docs/guide.txt"), "a guide\n").unwrap();
    git(&src, &["add", "."]);
    git(&src, &["commit", "-q", "-m", "first"]);
    std::fs::write(src.join("README"), "hello again\n").unwrap();
    git(&src, &["commit", "-q", "-am", "second"]);
    git(&src, &["tag", "-a", "v1", "-m", "version 1"]);
    let head = git(&src, &["rev-parse", "HEAD"]).trim().to_owned();
    let tag = git(&src, &["rev-parse", "refs/tags/v1"]).trim().to_owned();

    // Every object goes into cohort with its type; cohort computes the same ids.
    let cluster = TestCluster::start(3);
    stdout(&cluster.cli(&["repo", "create", "exported.git"]));
    let listing = git(&src, &["cat-file", "--batch-all-objects", "--batch-check=%(objectname) %(objecttype)"]);
    let mut count = 0;
    for line in listing.lines() {
        let (oid, kind) = line.split_once(' ').unwrap();
        let path = work.path().join(oid);
        let content = Command::new("git").args(["cat-file", kind, oid]).current_dir(&src).output().unwrap().stdout;
        std::fs::write(&path, content).unwrap();
        let put = stdout(&cluster.cli(&["object", "put", "exported.git", "--type", kind, path.to_str().unwrap()]));
        assert_eq!(put.trim(), oid, "cohort's id of the {kind} is git's");
        count += 1;
    }
    assert!(count >= 8, "commits, trees, blobs and a tag: {count} objects");
    stdout(&cluster.cli(&["ref", "update", "exported.git", "refs/heads/main", &head, "--must-not-exist"]));
    stdout(&cluster.cli(&["ref", "update", "exported.git", "refs/tags/v1", &tag, "--must-not-exist"]));
    stdout(&cluster.cli(&["ref", "update", "exported.git", "HEAD", "--symbolic", "refs/heads/main"]));

    let bare = work.path().join("exported.git");
    let out = stdout(&cluster.cli(&["repo", "export", "exported.git", bare.to_str().unwrap()]));
    assert!(out.contains(&format!("{count} objects, 3 references")), "{out}");

    // Git judges it.
    git(&bare, &["fsck", "--strict", "--no-dangling"]);
    assert_eq!(git(&bare, &["log", "--format=%s"]), "second\nfirst\n");
    assert_eq!(git(&bare, &["rev-parse", "HEAD"]).trim(), head);
    assert_eq!(git(&bare, &["describe", "--tags"]).trim(), "v1");
    let clone = work.path().join("clone");
    git(work.path(), &["clone", "-q", bare.to_str().unwrap(), clone.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(clone.join("README")).unwrap(), "hello again\n");
    assert_eq!(std::fs::read_to_string(clone.join("docs/guide.txt")).unwrap(), "a guide\n");

    // A directory that is in use is refused.
    let again = cluster.cli(&["repo", "export", "exported.git", bare.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
}
