//! Identity's admin API as the operator uses it, with the operator's own client credentials
//! (scope `identity.admin`).

use std::time::Duration;

use sharedcare_kit::auth::ServiceToken;
use sharedcare_proto::identity::v1 as api;
use sharedcare_proto::identity::v1::identity_admin_client::IdentityAdminClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// What went wrong talking to identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Identity refused a field; the message names it. Retrying will not help until the spec
    /// changes.
    #[error("identity refused it: {0}")]
    Invalid(String),
    /// Identity could not be reached or failed; retried with back-off.
    #[error("identity is unavailable: {0}")]
    Unavailable(String),
}

impl From<Status> for IdentityError {
    fn from(s: Status) -> Self {
        match s.code() {
            Code::InvalidArgument | Code::AlreadyExists | Code::FailedPrecondition => {
                IdentityError::Invalid(s.message().to_string())
            }
            _ => IdentityError::Unavailable(format!("{}: {}", s.code(), s.message())),
        }
    }
}

/// The admin API of one identity service.
#[derive(Clone)]
pub struct Identity {
    client: IdentityAdminClient<Channel>,
    token: ServiceToken,
}

type Result<T> = std::result::Result<T, IdentityError>;

impl Identity {
    /// Identity's gRPC endpoint (e.g. `http://identity:50051`), named by `setting` in errors.
    pub fn new(endpoint: &str, setting: &str, token: ServiceToken) -> sharedcare_kit::Result<Identity> {
        let channel = sharedcare_kit::peer::channel(endpoint, setting, Duration::from_secs(10))?;
        Ok(Identity {
            client: IdentityAdminClient::new(channel),
            token,
        })
    }

    async fn request<T>(&self, message: T) -> Result<tonic::Request<T>> {
        sharedcare_kit::peer::request(&self.token, message)
            .await
            .map_err(|e| IdentityError::Unavailable(format!("the operator's own token: {e}")))
    }

    /// An organisation, or `None`.
    pub async fn organisation(&self, ods_code: &str) -> Result<Option<api::Organisation>> {
        let req = self
            .request(api::GetOrganisationRequest {
                ods_code: ods_code.into(),
            })
            .await?;
        not_found_is_none(self.client.clone().get_organisation(req).await)
    }

    /// Creates an organisation (active).
    pub async fn create_organisation(&self, o: api::Organisation) -> Result<api::Organisation> {
        let req = self.request(o).await?;
        Ok(self.client.clone().create_organisation(req).await?.into_inner())
    }

    /// Replaces an organisation's name, kind, parent and active flag.
    pub async fn update_organisation(&self, o: api::Organisation) -> Result<api::Organisation> {
        let req = self.request(o).await?;
        Ok(self.client.clone().update_organisation(req).await?.into_inner())
    }

    /// Marks an organisation inactive (`None` when identity has no such organisation).
    pub async fn deactivate_organisation(&self, ods_code: &str) -> Result<Option<api::Organisation>> {
        let req = self
            .request(api::DeactivateOrganisationRequest {
                ods_code: ods_code.into(),
            })
            .await?;
        not_found_is_none(self.client.clone().deactivate_organisation(req).await)
    }

    /// A client's registration, or `None`.
    pub async fn client(&self, id: &str) -> Result<Option<api::ClientRegistration>> {
        let req = self.request(api::GetClientRequest { client_id: id.into() }).await?;
        not_found_is_none(self.client.clone().get_client(req).await)
    }

    /// Registers a client; its secret, if it has one.
    pub async fn create_client(&self, c: api::CreateClientRequest) -> Result<String> {
        let req = self.request(c).await?;
        Ok(self.client.clone().create_client(req).await?.into_inner().client_secret)
    }

    /// Replaces a client's registration; a new secret when one was made.
    pub async fn update_client(&self, c: api::CreateClientRequest, rotate_secret: bool) -> Result<String> {
        let req = self
            .request(api::UpdateClientRequest {
                client: Some(c),
                rotate_secret,
            })
            .await?;
        Ok(self.client.clone().update_client(req).await?.into_inner().client_secret)
    }

    /// Removes a client; false when identity had none.
    pub async fn delete_client(&self, id: &str) -> Result<bool> {
        let req = self.request(api::DeleteClientRequest { client_id: id.into() }).await?;
        Ok(not_found_is_none(self.client.clone().delete_client(req).await)?.is_some())
    }
}

fn not_found_is_none<T>(r: std::result::Result<tonic::Response<T>, Status>) -> Result<Option<T>> {
    match r {
        Ok(r) => Ok(Some(r.into_inner())),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(s.into()),
    }
}
