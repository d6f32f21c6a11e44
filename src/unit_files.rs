//! `baton unit NAME`: a `NAME.service` + `NAME.socket` pair for operators who want
//! `systemctl reload NAME.service` rather than the `baton@NAME` template.
//!
//! The text is the packaged template with the instance filled in, so the two never drift apart.

use std::path::{Path, PathBuf};

const SERVICE_TEMPLATE: &str = include_str!("../units/baton@.service");
const SOCKET_TEMPLATE: &str = include_str!("../units/baton@.socket");

/// The two unit files for app `name`: (file name, contents).
pub fn render(name: &str) -> [(String, String); 2] {
    let fill = |t: &str| {
        t.replace("baton@%i.service", &format!("{name}.service"))
            .replace("baton@%i.socket", &format!("{name}.socket"))
            .replace("%i", name)
    };
    [
        (format!("{name}.service"), fill(SERVICE_TEMPLATE)),
        (format!("{name}.socket"), fill(SOCKET_TEMPLATE)),
    ]
}

/// Write the pair into `dir` (normally /etc/systemd/system); returns the paths written.
pub fn install(name: &str, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (file, text) in render(name) {
        let path = dir.join(file);
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pair_names_each_other_and_the_config() {
        let [(svc_name, svc), (sock_name, sock)] = render("shop");
        assert_eq!(svc_name, "shop.service");
        assert_eq!(sock_name, "shop.socket");
        assert!(svc.contains("ExecStart=/usr/bin/baton run --config /etc/baton/shop.toml"));
        assert!(
            svc.contains("ExecReload=/usr/bin/baton restart --wait --config /etc/baton/shop.toml")
        );
        assert!(svc.contains("Requires=shop.socket"));
        assert!(sock.contains("Service=shop.service"));
        assert!(!svc.contains("%i") && !sock.contains("%i"));
    }
}
