//! TokenReview (authentication.k8s.io/v1) and SubjectAccessReview (authorization.k8s.io/v1)
//! against the API server: the [`Reviewer`] of `/metrics` (`serve::metrics_auth`), as
//! kube-rbac-proxy's delegating authenticator and authorizer do. The token goes only into the
//! TokenReview's body; errors carry the API error's kind label, never the request.

use crate::adapters::serve::metrics_auth::{Access, MetricsAuthError, ReviewFuture, Reviewer};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use secrecy::{ExposeSecret, SecretString};

/// Reviews through `client`.
pub struct KubeReviewer {
    client: kube::Client,
}

impl KubeReviewer {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    async fn review_token(&self, token: &SecretString) -> Result<Access, MetricsAuthError> {
        let fail = |e: kube::Error| {
            MetricsAuthError::Review(super::api_errors::kind(&e).label().to_string())
        };
        let params = PostParams {
            field_manager: Some(super::FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.expose_secret().to_string()),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&params, &review)
            .await
            .map_err(fail)?;
        let status = reviewed.status.unwrap_or_default();
        let Some(user) = status.user.filter(|_| status.authenticated == Some(true)) else {
            return Ok(Access::Unauthenticated);
        };
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                uid: user.uid,
                groups: user.groups,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some("/metrics".into()),
                    verb: Some("get".into()),
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let decided = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&params, &access)
            .await
            .map_err(fail)?;
        Ok(if decided.status.is_some_and(|s| s.allowed) {
            Access::Allowed
        } else {
            Access::Forbidden
        })
    }
}

impl Reviewer for KubeReviewer {
    fn review<'a>(&'a self, token: &'a SecretString) -> ReviewFuture<'a> {
        Box::pin(self.review_token(token))
    }
}
