//! The custom resources, `sharedcare.nhs.uk/v1`: `CareOrganisation` (a care provider, by ODS
//! code) and `CareApp` (an OIDC client of identity). Their CRDs are generated from these types
//! (`sharedcare operator crds`); what the schema can refuse (an ODS code's shape, a grant type,
//! a redirect URI that is neither https nor on the local host) it refuses at `kubectl apply`.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The API group.
pub const GROUP: &str = "sharedcare.nhs.uk";

/// A care organisation known to identity, by its ODS code.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sharedcare.nhs.uk",
    version = "v1",
    kind = "CareOrganisation",
    namespaced,
    status = "Status",
    shortname = "careorg",
    category = "sharedcare",
    printcolumn = r#"{"name":"ODS","type":"string","jsonPath":".spec.odsCode"}"#,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CareOrganisationSpec {
    /// The organisation's ODS code, e.g. `A81001` (3 to 10 capital letters and digits).
    #[schemars(regex(pattern = r"^[A-Z0-9]{3,10}$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("odsCode cannot change: create another CareOrganisation"))]
    pub ods_code: String,
    /// Its name.
    #[schemars(length(min = 1, max = 200))]
    pub name: String,
    /// What kind of care it gives.
    #[serde(rename = "type")]
    pub kind: OrganisationType,
    /// The ODS code of the organisation it belongs to (e.g. a practice's ICB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Z0-9]{3,10}$"))]
    pub parent: Option<String>,
    /// Whether it is active. An inactive organisation's apps get no tokens.
    #[serde(default = "active")]
    pub active: bool,
}

fn active() -> bool {
    true
}

/// The kinds of organisation an ICS onboards.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum OrganisationType {
    /// A general practice.
    GPPractice,
    /// An acute hospital trust.
    AcuteTrust,
    /// A community health trust.
    Community,
    /// A mental health trust.
    MentalHealth,
    /// A care home.
    CareHome,
    /// A home (domiciliary) care provider.
    DomiciliaryCare,
    /// A local authority (adult social care).
    LocalAuthority,
    /// The integrated care board.
    ICB,
}

impl OrganisationType {
    /// The kind identity records (its kinds are coarser: trusts are one kind).
    pub fn identity_kind(self) -> &'static str {
        match self {
            OrganisationType::GPPractice => "gp_practice",
            OrganisationType::AcuteTrust | OrganisationType::Community | OrganisationType::MentalHealth => "nhs_trust",
            OrganisationType::CareHome => "care_home",
            OrganisationType::DomiciliaryCare => "home_care_provider",
            OrganisationType::LocalAuthority => "local_authority",
            OrganisationType::ICB => "icb",
        }
    }
}

/// An app that signs people in through identity: an OIDC client.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sharedcare.nhs.uk",
    version = "v1",
    kind = "CareApp",
    namespaced,
    status = "Status",
    category = "sharedcare",
    printcolumn = r#"{"name":"Client","type":"string","jsonPath":".status.clientId"}"#,
    printcolumn = r#"{"name":"Organisation","type":"string","jsonPath":".spec.organisationRef.name"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#
)]
#[x_kube(validation = Rule::new("self.tokenEndpointAuthMethod != 'private_key_jwt' || has(self.jwks) || has(self.jwksUri)").message("private_key_jwt needs jwks or jwksUri"))]
#[x_kube(validation = Rule::new("!self.grantTypes.exists(g, g == 'authorization_code') || size(self.redirectUris) > 0").message("authorization_code needs at least one redirect URI"))]
#[serde(rename_all = "camelCase")]
pub struct CareAppSpec {
    /// The name people see when they sign in. Default: the resource's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub display_name: Option<String>,
    /// The CareOrganisation (in this namespace) the app belongs to.
    pub organisation_ref: OrganisationRef,
    /// Where identity may send people back after login: https, or http on localhost.
    #[serde(default)]
    #[schemars(length(max = 32), inner(length(min = 1, max = 2048)))]
    #[x_kube(validation = Rule::new(SECURE_URIS).message("redirect URIs must be https (http only on localhost or 127.0.0.1)"))]
    pub redirect_uris: Vec<String>,
    /// Where identity may send people after logout: https, or http on localhost.
    #[serde(default)]
    #[schemars(length(max = 32), inner(length(min = 1, max = 2048)))]
    #[x_kube(validation = Rule::new(SECURE_URIS).message("post-logout redirect URIs must be https (http only on localhost or 127.0.0.1)"))]
    pub post_logout_redirect_uris: Vec<String>,
    /// The OAuth grants it uses.
    #[schemars(length(min = 1, max = 3))]
    pub grant_types: Vec<GrantType>,
    /// The scopes it may ask for (e.g. `openid`, `profile`, `records.read`).
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 128)))]
    pub scopes: Vec<String>,
    /// How it authenticates at the token endpoint.
    #[serde(default)]
    pub token_endpoint_auth_method: AuthMethod,
    /// Its public keys, a JWK Set as JSON (private_key_jwt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub jwks: Option<String>,
    /// Or where its JWK Set is published (private_key_jwt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://')").message("jwksUri must be https"))]
    pub jwks_uri: Option<String>,
    /// Its OIDC back-channel logout endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(SECURE_URI).message("backchannelLogoutUri must be https (http only on localhost or 127.0.0.1)"))]
    pub backchannel_logout_uri: Option<String>,
}

/// A CEL rule: every URI of the list is https, or http on the local host.
const SECURE_URIS: &str =
    r"self.all(u, u.startsWith('https://') || u.matches('^http://(localhost|127\\.0\\.0\\.1)(:[0-9]+)?(/.*)?$'))";
/// A CEL rule: the URI is https, or http on the local host.
const SECURE_URI: &str =
    r"self.startsWith('https://') || self.matches('^http://(localhost|127\\.0\\.0\\.1)(:[0-9]+)?(/.*)?$')";

/// A reference to a CareOrganisation in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct OrganisationRef {
    /// The CareOrganisation's name.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// OAuth grant types identity supports.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    /// Sign people in (OIDC authorization code flow with PKCE).
    AuthorizationCode,
    /// Refresh tokens.
    RefreshToken,
    /// The app's own tokens (service to service).
    ClientCredentials,
}

impl GrantType {
    /// As identity names it.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::AuthorizationCode => "authorization_code",
            GrantType::RefreshToken => "refresh_token",
            GrantType::ClientCredentials => "client_credentials",
        }
    }
}

/// Token endpoint authentication.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// A client secret (HTTP Basic), written to a Secret by the operator.
    #[default]
    ClientSecretBasic,
    /// A signed JWT assertion with the app's own key.
    PrivateKeyJwt,
}

impl AuthMethod {
    /// As identity names it.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::PrivateKeyJwt => "private_key_jwt",
        }
    }
}

/// What the operator reports on either resource.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// `Ready`, `Reconciling` and `Degraded`, each with the generation it describes.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The generation last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// CareApp: the client id in identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// CareApp: the Secret holding `client_id`, `client_secret` and `issuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// CareApp: the value of the rotation annotation last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_for: Option<String>,
}

/// The conditions the operator writes, each `True` or `False` on every resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionKind {
    /// Identity holds what the spec asks for.
    Ready,
    /// A change is being brought to identity.
    Reconciling,
    /// The last reconcile failed: the message says why, naming the field when one is at fault.
    Degraded,
}

impl ConditionKind {
    /// The condition's `type`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConditionKind::Ready => "Ready",
            ConditionKind::Reconciling => "Reconciling",
            ConditionKind::Degraded => "Degraded",
        }
    }
}

impl Status {
    /// Whether condition `kind` is `True`.
    pub fn holds(&self, kind: ConditionKind) -> bool {
        self.condition(kind).is_some_and(|c| c.status == "True")
    }

    /// Condition `kind`, if written.
    pub fn condition(&self, kind: ConditionKind) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.kind == kind.as_str())
    }
}

/// A status condition (the shape of `metav1.Condition`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Reconciling` or `Degraded`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One CamelCase word.
    pub reason: String,
    /// What happened, naming the field when one is at fault.
    pub message: String,
    /// The generation this condition describes.
    pub observed_generation: i64,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
}

/// Both CRDs, as the API server takes them.
pub fn crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    use kube::CustomResourceExt;
    vec![CareOrganisation::crd(), CareApp::crd()]
}
