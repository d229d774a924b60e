//! Identity's settings (`[identity]` in the configuration file, `SHAREDCARE_IDENTITY__*`).

use serde::{Deserialize, Serialize};
use sharedcare_kit::config::Invalid;

/// Identity provider settings. Defaults follow NHS login's relying-party session rules.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// The issuer URL (`iss`). Empty = the HTTP base URL the process serves on.
    pub issuer: String,
    /// Audience every platform service checks in access tokens.
    pub audience: String,
    /// A session ends after this long without use (seconds).
    pub session_idle_secs: i64,
    /// A session ends this long after login whatever happens (seconds).
    pub session_absolute_secs: i64,
    /// Access and ID token lifetime (seconds).
    pub access_token_secs: i64,
    /// Refresh token lifetime (seconds); each use rotates it.
    pub refresh_token_secs: i64,
    /// Authorization code lifetime (seconds).
    pub code_secs: i64,
    /// A new signing key is made after this many hours; the old one stays published until
    /// every token it signed has expired.
    pub key_rotation_hours: i64,
    /// A scheduled new key is published this long before it starts signing (relying parties
    /// that cache the JWK Set pick it up in time); at most half the rotation period.
    pub key_prepublish_secs: i64,
    /// Failed sign-in attempts in a row (wrong passwords and wrong security codes) that lock
    /// an account.
    pub lockout_after: i64,
    /// How long the first lock lasts (seconds); doubles with each further lockout up to
    /// `lockout_max_secs`.
    pub lockout_secs: i64,
    /// The longest lock (seconds): a growing delay, never a days-long lock.
    pub lockout_max_secs: i64,
    /// Failed sign-in attempts per source address per minute, across every replica, before
    /// that address gets 429 for the rest of the minute.
    pub address_failures_per_minute: u32,
    /// Proxies (addresses or CIDR blocks, e.g. the ingress controller's pod network
    /// `10.42.0.0/16`) whose `X-Forwarded-For` names the real client: the client address is
    /// the right-most address in it that is not one of them. Empty = the connection's peer
    /// address is the client's.
    pub trusted_proxies: Vec<String>,
    /// Argon2id memory cost in KiB (OWASP: 19456 with t=2, p=1).
    pub argon2_memory_kib: u32,
    /// Argon2id iterations.
    pub argon2_iterations: u32,
    /// Seed the demo ICS (organisations, staff, patients, clients) into an empty database.
    /// Unset = yes for `up`, no for `serve` (a production deployment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed_demo: Option<bool>,
    /// With the demo ICS, also write its patients' clinical record into an empty shared care
    /// record (through records, as the demo's integration engine) when `up` starts.
    pub seed_demo_record: bool,
    /// Set the `Secure` flag on cookies (on whenever the issuer is https).
    pub secure_cookies: bool,
    /// Cookie names are `<prefix>_session` and `<prefix>_csrf` (change it when two identity
    /// services share a host name).
    pub cookie_prefix: String,
    /// Upstream OpenID providers users can be sent to (CIS2, NHS login, another ICS).
    pub upstreams: Vec<UpstreamConfig>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            issuer: String::new(),
            audience: "sharedcare".into(),
            session_idle_secs: 30 * 60,
            session_absolute_secs: 12 * 3600,
            access_token_secs: 600,
            refresh_token_secs: 12 * 3600,
            code_secs: 60,
            key_rotation_hours: 24 * 7,
            key_prepublish_secs: 3600,
            lockout_after: 5,
            lockout_secs: 60,
            lockout_max_secs: 900,
            address_failures_per_minute: 30,
            trusted_proxies: Vec::new(),
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            seed_demo: None,
            seed_demo_record: true,
            secure_cookies: false,
            cookie_prefix: "sc".into(),
            upstreams: Vec::new(),
        }
    }
}

impl IdentityConfig {
    /// The lockout rule these settings give.
    pub fn lock_policy(&self) -> crate::store::LockPolicy {
        crate::store::LockPolicy {
            after: self.lockout_after,
            base_secs: self.lockout_secs,
            max_secs: self.lockout_max_secs,
        }
    }

    /// The trusted proxies as networks (a bare address is a /32 or /128).
    pub fn proxy_networks(&self) -> Vec<ipnet::IpNet> {
        self.trusted_proxies
            .iter()
            .filter_map(|p| {
                p.parse::<ipnet::IpNet>()
                    .ok()
                    .or_else(|| p.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
            })
            .collect()
    }

    /// Returns `Err((key, reason))` for the first invalid setting.
    pub fn validate(&self) -> Result<(), Invalid> {
        let positive = [
            ("identity.session_idle_secs", self.session_idle_secs),
            ("identity.session_absolute_secs", self.session_absolute_secs),
            ("identity.access_token_secs", self.access_token_secs),
            ("identity.refresh_token_secs", self.refresh_token_secs),
            ("identity.code_secs", self.code_secs),
            ("identity.key_rotation_hours", self.key_rotation_hours),
            ("identity.key_prepublish_secs", self.key_prepublish_secs + 1),
            ("identity.lockout_after", self.lockout_after),
            ("identity.lockout_secs", self.lockout_secs),
            ("identity.lockout_max_secs", self.lockout_max_secs),
        ];
        for (key, v) in positive {
            if v < 1 {
                return Err(Invalid::new(key, "must be at least 1"));
            }
        }
        if !self.issuer.is_empty() && url::Url::parse(&self.issuer).is_err() {
            return Err(Invalid::new(
                "identity.issuer",
                "expected an absolute URL such as https://id.example.nhs.uk",
            ));
        }
        if self.lockout_max_secs < self.lockout_secs {
            return Err(Invalid::new(
                "identity.lockout_max_secs",
                "must be at least identity.lockout_secs",
            ));
        }
        for (i, p) in self.trusted_proxies.iter().enumerate() {
            if p.parse::<ipnet::IpNet>().is_err() && p.parse::<std::net::IpAddr>().is_err() {
                return Err(Invalid::new(
                    format!("identity.trusted_proxies[{i}]"),
                    format!("{p:?} is not an IP address or CIDR block such as 10.42.0.0/16"),
                ));
            }
        }
        if self.argon2_memory_kib < 8 * 1024 {
            return Err(Invalid::new("identity.argon2_memory_kib", "must be at least 8192"));
        }
        for (i, u) in self.upstreams.iter().enumerate() {
            u.validate(i)?;
        }
        if self.cookie_prefix.is_empty()
            || !self
                .cookie_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(Invalid::new(
                "identity.cookie_prefix",
                "expected letters, digits and '_'",
            ));
        }
        if self.audience.is_empty() {
            return Err(Invalid::new("identity.audience", "must not be empty"));
        }
        Ok(())
    }
}

/// One upstream provider (`[[identity.upstreams]]`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Short name used in `kc_idp_hint` and URLs, e.g. "nhslogin" or "cis2".
    pub name: String,
    /// Shown on the login page button, e.g. "NHS login".
    pub display_name: String,
    /// The upstream issuer (discovery at `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    /// Our client id at the upstream.
    pub client_id: String,
    /// Scopes to ask for (space separated); must include `openid`.
    #[serde(default = "default_scopes")]
    pub scopes: String,
    /// Upstream ID token claim that identifies the local account, e.g. "nhs_number".
    pub link_claim: String,
    /// What the claim identifies: "patient" (by NHS number) or "staff" (by nhsid_useruid).
    pub link_to: String,
}

fn default_scopes() -> String {
    "openid".into()
}

impl UpstreamConfig {
    /// Returns `Err((key, reason))` for the first invalid setting of upstream `i`.
    pub fn validate(&self, i: usize) -> std::result::Result<(), Invalid> {
        let key = |k: &str| format!("identity.upstreams[{i}].{k}");
        if self.name.is_empty() || !self.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(Invalid::new(key("name"), "expected letters, digits and '-'"));
        }
        if url::Url::parse(&self.issuer).is_err() {
            return Err(Invalid::new(key("issuer"), "expected an absolute URL"));
        }
        if self.client_id.is_empty() {
            return Err(Invalid::new(key("client_id"), "is required"));
        }
        if !self.scopes.split_whitespace().any(|s| s == "openid") {
            return Err(Invalid::new(key("scopes"), "must include openid"));
        }
        if !matches!(self.link_to.as_str(), "patient" | "staff") {
            return Err(Invalid::new(key("link_to"), "expected patient or staff"));
        }
        if self.link_claim.is_empty() {
            return Err(Invalid::new(key("link_claim"), "is required"));
        }
        Ok(())
    }
}
