//! Checks of a brand's endpoints that only an adapter can make: a receiver's URL must
//! be https and name a public host (no loopback, private or link-local address: the
//! service must not be made to call its own network), unless configured otherwise.
//! The name of a host is checked as written; what it resolves to at send time is not.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A receiver's URL longer than this is not one.
pub const ENDPOINT_URL_CHARS_MAX: usize = 2_048;

/// What the configuration allows receivers to be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UrlRules {
    /// Plain `http://` receivers (development, tests).
    pub allow_http: bool,
    /// Loopback, private and link-local hosts (tests, receivers inside the network).
    pub allow_private: bool,
}

/// Why `url` may not receive notices, if it may not.
pub fn check_url(url: &str, rules: UrlRules) -> Result<(), String> {
    if url.chars().count() > ENDPOINT_URL_CHARS_MAX {
        return Err(format!(
            "is longer than {ENDPOINT_URL_CHARS_MAX} characters"
        ));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => {}
        "http" if rules.allow_http => {}
        "http" => return Err("must be https".to_owned()),
        other => return Err(format!("has scheme {other}: only https is delivered to")),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials".to_owned());
    }
    let host = parsed.host().ok_or("has no host")?;
    if rules.allow_private {
        return Ok(());
    }
    let private = match host {
        url::Host::Ipv4(ip) => private_v4(ip),
        url::Host::Ipv6(ip) => private_v6(ip),
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost"
                || [".localhost", ".local", ".internal", ".localdomain"]
                    .iter()
                    .any(|s| name.ends_with(s))
                || name.parse::<IpAddr>().is_ok_and(|ip| match ip {
                    IpAddr::V4(v4) => private_v4(v4),
                    IpAddr::V6(v6) => private_v6(v6),
                })
        }
    };
    match private {
        true => Err("names a loopback, private or link-local host".to_owned()),
        false => Ok(()),
    }
}

fn private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (carrier NAT)
}

fn private_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || ip.to_ipv4_mapped().is_some_and(private_v4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_https_receivers_pass_by_default() {
        let strict = UrlRules::default();
        assert_eq!(
            check_url("https://hooks.slack.com/services/T0/B0/x", strict),
            Ok(())
        );
        assert_eq!(check_url("https://8.8.8.8/hook", strict), Ok(()));
        for bad in [
            "http://hooks.example.com/x",
            "ftp://example.com/x",
            "https://localhost/x",
            "https://api.localhost/x",
            "https://127.0.0.1/x",
            "https://10.0.0.5/x",
            "https://192.168.1.1/x",
            "https://172.16.0.1/x",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/x",
            "https://0.0.0.0/x",
            "https://[::1]/x",
            "https://[fd00::1]/x",
            "https://[fe80::1]/x",
            "https://[::ffff:127.0.0.1]/x",
            "https://user:pass@example.com/x",
            "https://db.internal/x",
            "not a url",
        ] {
            assert!(check_url(bad, strict).is_err(), "{bad}");
        }
        let tests = UrlRules {
            allow_http: true,
            allow_private: true,
        };
        assert_eq!(check_url("http://127.0.0.1:8080/x", tests), Ok(()));
        assert!(check_url(&format!("https://e.com/{}", "a".repeat(3000)), tests).is_err());
    }
}
