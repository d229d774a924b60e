//! `sharedcare.passport.v1.Passport` over gRPC: decode, call the API, encode.

use sharedcare_proto::passport::v1::passport_server::Passport;
use sharedcare_proto::passport::v1::{
    AccessLog, GetPassportRequest, GetSharingChoicesRequest, ListAccessLogRequest, PassportView, SharingChoices,
};
use tonic::{Request, Response, Status};

use crate::api::Api;

/// The gRPC service.
#[derive(Clone)]
pub struct PassportApi {
    api: Api,
}

impl PassportApi {
    /// Serves `api`.
    pub fn new(api: Api) -> Self {
        PassportApi { api }
    }
}

#[tonic::async_trait]
impl Passport for PassportApi {
    async fn get_passport(&self, request: Request<GetPassportRequest>) -> Result<Response<PassportView>, Status> {
        let who = sharedcare_kit::caller::of(&request)?;
        let r = request.into_inner();
        let view = self.api.passport(&who, &r.nhs_number, &r.purpose).await?;
        Ok(Response::new(view.into()))
    }

    async fn get_sharing_choices(
        &self,
        request: Request<GetSharingChoicesRequest>,
    ) -> Result<Response<SharingChoices>, Status> {
        let who = sharedcare_kit::caller::of(&request)?;
        let choices = self.api.sharing_choices(&who, &request.get_ref().nhs_number).await?;
        Ok(Response::new(choices))
    }

    async fn list_access_log(&self, request: Request<ListAccessLogRequest>) -> Result<Response<AccessLog>, Status> {
        let who = sharedcare_kit::caller::of(&request)?;
        let r = request.into_inner();
        let log = self
            .api
            .access_log(&who, &r.nhs_number, r.page_size, r.before_sequence)
            .await?;
        Ok(Response::new(log))
    }
}
