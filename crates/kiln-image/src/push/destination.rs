//! Where an image goes: `REGISTRY/REPOSITORY` checked against the OCI distribution spec's
//! grammar, the tags it gets, and whether the registry may be spoken to in plain HTTP.

use crate::Error;

/// A parsed `REGISTRY/REPOSITORY`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// `host[:port]`, as written (`127.0.0.1:5000`, `[::1]:5000`, `ghcr.io`).
    pub registry: String,
    /// `team/iris`.
    pub repository: String,
}

impl Destination {
    pub fn parse(destination: &str) -> Result<Destination, Error> {
        let bad = |reason: &str| Error::BadDestination {
            destination: destination.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(scheme) = ["https://", "http://", "docker://", "oci://"]
            .iter()
            .find(|scheme| destination.starts_with(**scheme))
        {
            return Err(bad(&format!(
                "give it without `{scheme}` (plain HTTP is chosen by `--insecure` or a loopback address)"
            )));
        }
        let Some((registry, repository)) = destination.split_once('/') else {
            return Err(bad("it names no registry: expected `REGISTRY/REPOSITORY`"));
        };
        // As Docker reads names: a first part without `.` or `:` is a path, not a host.
        let looks_like_host =
            registry.contains(['.', ':', '[']) || registry == "localhost" || registry.is_empty();
        if !looks_like_host {
            return Err(bad(
                "it names no registry: expected `REGISTRY/REPOSITORY`, the registry with a `.` or a port",
            ));
        }
        if registry.is_empty() || !registry_is_valid(registry) {
            return Err(bad(&format!("`{registry}` is not a registry host[:port]")));
        }
        if repository.contains('@') {
            return Err(bad("a destination is a repository, without a digest"));
        }
        if let Some(last) = repository.rsplit('/').next()
            && last.contains(':')
        {
            return Err(bad(
                "a destination is a repository, without a tag (tags come from the version)",
            ));
        }
        if repository.len() > 255 || !repository.split('/').all(component_is_valid) {
            return Err(bad(&format!(
                "`{repository}` is not a repository name (lowercase letters and digits, \
                 separated by `.`, `_`, `__`, `-` or `/`)"
            )));
        }
        Ok(Destination {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
        })
    }

    /// The host without its port or brackets.
    pub fn host(&self) -> &str {
        let registry = self.registry.as_str();
        if let Some(rest) = registry.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        registry.split(':').next().unwrap_or(registry)
    }

    /// Loopback registries are spoken to in plain HTTP (a test or a local registry); any other
    /// only with `--insecure`.
    pub fn is_loopback(&self) -> bool {
        let host = self.host();
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|address| address.is_loopback())
    }

    /// `127.0.0.1:5000/team/iris`.
    pub fn repository_url(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

/// A tag as the distribution spec allows: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn check_tag(tag: &str) -> Result<(), Error> {
    let bad = |reason| {
        Err(Error::BadTag {
            tag: tag.to_owned(),
            reason,
        })
    };
    let mut chars = tag.chars();
    match chars.next() {
        None => return bad("it is empty"),
        Some(first) if !(first.is_ascii_alphanumeric() || first == '_') => {
            return bad("it must start with a letter, a digit or `_`");
        }
        Some(_) => {}
    }
    if tag.len() > 128 {
        return bad("it is longer than 128 characters");
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return bad("only letters, digits, `.`, `_` and `-` are allowed");
    }
    Ok(())
}

fn registry_is_valid(registry: &str) -> bool {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        match rest.split_once(']') {
            Some((address, port)) => {
                if address.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                (None, port.strip_prefix(':').map(Some).unwrap_or(Some("")))
            }
            None => return false,
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        }
    };
    let host_ok = host.is_none_or(|host| {
        !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
    });
    let port_ok = match port {
        None => true,
        Some("") => registry.starts_with('[') && !registry.ends_with(':'),
        Some(port) => port.parse::<u16>().is_ok_and(|port| port > 0),
    };
    host_ok && port_ok
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn component_is_valid(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let dashes = separator.bytes().all(|b| b == b'-');
        if !(separator == "." || separator == "_" || separator == "__" || dashes) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_into_registry_and_repository() {
        let parsed = Destination::parse("127.0.0.1:5000/team/iris").unwrap();
        assert_eq!(parsed.registry, "127.0.0.1:5000");
        assert_eq!(parsed.repository, "team/iris");
        assert!(parsed.is_loopback());
        assert!(Destination::parse("localhost/iris").unwrap().is_loopback());
        let v6 = Destination::parse("[::1]:5000/iris").unwrap();
        assert_eq!(v6.host(), "::1");
        assert!(v6.is_loopback());
        let remote = Destination::parse("ghcr.io/acme/iris-model_a.b__c--d").unwrap();
        assert!(!remote.is_loopback());
        assert_eq!(remote.repository_url(), "ghcr.io/acme/iris-model_a.b__c--d");
    }

    #[test]
    fn bad_destinations_say_what_is_wrong() {
        for (destination, reason) in [
            ("iris", "names no registry"),
            ("https://r.example/iris", "without `https://`"),
            ("r.example/iris:v3", "without a tag"),
            ("r.example/iris@sha256:00", "without a digest"),
            ("r.example/Iris", "not a repository name"),
            ("r.example/team//iris", "not a repository name"),
            ("r.example/iris-", "not a repository name"),
            ("r.example:99999/iris", "not a registry"),
            ("bad_host.example/iris", "not a registry"),
            ("kiln/iris", "names no registry"),
            ("/iris", "not a registry"),
        ] {
            let error = Destination::parse(destination).unwrap_err();
            assert!(error.to_string().contains(reason), "{destination}: {error}");
        }
    }

    #[test]
    fn tags_follow_the_distribution_spec() {
        for tag in ["v3", "latest", "0a1b2c3d", "_x", "a.b-c_d"] {
            check_tag(tag).unwrap();
        }
        for tag in ["", "-v3", ".x", "a/b", "a:b", &"x".repeat(129)] {
            assert!(check_tag(tag).is_err(), "{tag}");
        }
    }
}
