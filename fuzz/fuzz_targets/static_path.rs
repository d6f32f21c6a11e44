//! `static_path`: arbitrary bytes (lossily made UTF-8) as the URL path of a request for a
//! static file (`[static]`), answered by `assets::Assets` from a real release directory on
//! disk: a `public/` with files and subdirectories, a dotfile, a symlink within it and
//! symlinks out of it, and a secret file beside `public/`.
//!
//! Asserts: nothing panics; every answer's bytes are those of a file inside `public/` that
//! may be served (never the secret, never a dotfile's, never what a symlink out of it leads
//! to); a path `relative` accepts has no `.`/`..` segment, no dotfile segment, no NUL or
//! backslash, and is relative.

#![no_main]

use baton::assets::{Assets, Content, Refusal, relative};
use baton::config::StaticConfig;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::Duration;

const SECRET: &[u8] = b"SECRET: outside the static directory";
const HIDDEN: &[u8] = b"HIDDEN: a dotfile";
/// What may be served: the files of public/ (by content).
const SERVED: [&[u8]; 3] = [b"body{}", b"console.log(1)", b"deep"];

struct World {
    rt: tokio::runtime::Runtime,
    assets: Assets,
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let rel = dir.path().join("release");
        let public = rel.join("public");
        std::fs::create_dir_all(public.join("assets/sub")).unwrap();
        std::fs::write(rel.join("secret.txt"), SECRET).unwrap();
        std::fs::write(dir.path().join("secret.txt"), SECRET).unwrap();
        std::fs::write(public.join("assets/app.css"), SERVED[0]).unwrap();
        std::fs::write(public.join("assets/app.js"), SERVED[1]).unwrap();
        std::fs::write(public.join("assets/sub/x.txt"), SERVED[2]).unwrap();
        std::fs::write(public.join("assets/.env"), HIDDEN).unwrap();
        std::os::unix::fs::symlink("app.css", public.join("assets/alias.css")).unwrap();
        std::os::unix::fs::symlink("../../secret.txt", public.join("assets/up")).unwrap();
        std::os::unix::fs::symlink("../../../secret.txt", public.join("assets/up2")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), public.join("assets/abs"))
            .unwrap();
        std::os::unix::fs::symlink("/etc", public.join("assets/etc")).unwrap();
        let config = StaticConfig {
            directory: Some("public".into()),
            prefixes: vec!["/".into()],
            ..StaticConfig::default()
        };
        let assets = Assets::new(&config, Duration::from_secs(1)).unwrap();
        assets.pin(1, &rel).unwrap();
        assets.serving(&[1]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        World {
            rt,
            assets,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let path = String::from_utf8_lossy(data);
    if let Ok(rel) = relative(&path) {
        assert!(!rel.starts_with('/'), "{rel:?}");
        assert!(!rel.contains('\0') && !rel.contains('\\'), "{rel:?}");
        for seg in rel.split('/') {
            assert!(
                !seg.is_empty() && !seg.starts_with('.'),
                "{rel:?} from {path:?}"
            );
        }
    }
    let w = world();
    if !w.assets.claims(path.as_bytes()) {
        return;
    }
    let headers = http::HeaderMap::new();
    let answer =
        w.rt.block_on(w.assets.answer(&http::Method::GET, &path, &headers));
    match answer {
        Ok(a) => {
            assert_eq!(a.status, 200, "{path:?}");
            let body = match a.body {
                Some(Content::Memory(b)) => b.to_vec(),
                Some(Content::File(_)) => panic!("a test file is small: {path:?}"),
                None => Vec::new(),
            };
            assert!(
                SERVED.contains(&body.as_slice()),
                "{path:?} was answered with {:?}",
                String::from_utf8_lossy(&body)
            );
        }
        Err(Refusal::BadPath | Refusal::NotFound) => {}
        Err(e) => panic!("{path:?}: {e:?}"),
    }
});
