//! The layering check CI runs (`tools/modcycles.py`): the workspace has no import cycle between
//! the files of a crate, and the check finds one when a lower layer imports a higher one.

use std::path::Path;
use std::process::Command;

use crate::kubernetes::root;

fn modcycles(dir: &Path) -> (bool, String) {
    let out = Command::new("python3")
        .arg(root().join("tools/modcycles.py"))
        .arg(dir)
        .output()
        .expect("run python3 tools/modcycles.py");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn no_crate_in_the_workspace_has_an_import_cycle_between_its_files() {
    let out = Command::new("python3")
        .arg(root().join("tools/modcycles.py"))
        .output()
        .expect("run python3 tools/modcycles.py");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("no import cycle between files in"), "{text}");
}

#[test]
fn the_check_finds_a_lower_layer_importing_a_higher_one_and_ignores_what_it_should() {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path();
    std::fs::create_dir_all(src.join("store")).expect("mkdir");
    let write = |name: &str, text: &str| std::fs::write(src.join(name), text).expect("write");
    write(
        "lib.rs",
        "pub mod db;\npub mod service;\npub mod store;\npub use service::Service;\n",
    );
    // The shape #23 removed from kit: db needs service, service needs db.
    write(
        "db.rs",
        "pub struct Db;\nimpl Db { pub fn migrate(&self, _: crate::service::Migrations) {} }\n",
    );
    write(
        "service.rs",
        "use crate::db::Db;\npub enum Migrations { One }\npub struct Service(Db);\n\
         #[cfg(test)]\nmod tests {\n    use crate::store::Store;\n}\n",
    );
    // A parent that re-exports its children, and children that use the parent's re-export,
    // is ownership, not a cycle; nor is a path inside a string or a comment.
    write(
        "store/mod.rs",
        "mod rows;\npub use rows::Row;\npub struct Store(Vec<Row>);\n",
    );
    write(
        "store/rows.rs",
        "// crate::service::Service would be a cycle if it were code\n\
         pub struct Row;\npub fn name() -> &'static str { \"crate::db::Db\" }\n",
    );
    let (ok, text) = modcycles(src);
    assert!(!ok, "{text}");
    assert!(
        text.contains("db.rs:2 uses") && text.contains("service.rs:1 uses"),
        "{text}"
    );
    assert!(
        !text.contains("store"),
        "ownership, strings, comments and tests are not uses: {text}"
    );

    // Move Migrations down into db, as kit did: the cycle is gone.
    write(
        "db.rs",
        "pub struct Db;\npub enum Migrations { One }\nimpl Db { pub fn migrate(&self, _: Migrations) {} }\n",
    );
    write(
        "service.rs",
        "use crate::db::{Db, Migrations};\npub struct Service(Db, Option<Migrations>);\n",
    );
    let (ok, text) = modcycles(src);
    assert!(ok, "{text}");
}
