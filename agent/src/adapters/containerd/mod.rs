//! containerd's own API (the `containerd-client` crate's tonic bindings), on the socket the CRI
//! is served on: the image store of the CRI's namespace (`k8s.io`), read and labelled to pin
//! images ([`ContainerdPins`] implements `decide::pin::ImagePins`). The only module that knows
//! `containerd_client`.
//!
//! A pin is an `Images.Update` of one record with the field mask
//! `labels.io.cri-containerd.pinned`, `labels.pullgate.io/pinned`, both set; an unpin the same
//! mask with both labels absent (containerd's metadata store drops a label the mask names and the
//! image lacks, `core/metadata/images.go` `Update`). The record's own target is sent back with
//! it (containerd 1.7's `imageFromProto` reads the target unconditionally). The CRI learns of the
//! change from the `/images/update` event and reports the image `pinned` by `ImageStatus` soon
//! after.

use crate::adapters::cri::CriEndpoint;
use crate::decide::pin::{
    CRI_PINNED_LABEL, CRI_PINNED_VALUE, ImagePins, ImageRecord, OWN_PIN_LABEL, OWN_PIN_VALUE,
    PinAction, PinFailure,
};
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{GetImageRequest, ListImagesRequest, UpdateImageRequest};
use futures::future::BoxFuture;
use std::time::Duration;
use tonic::transport::Channel;

/// The containerd namespace the CRI keeps its images in.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// A failed call to containerd's image store, naming the call and the record.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("containerd Images.{call}{on}: {code:?}: {message} (at {endpoint})")]
    Call {
        call: &'static str,
        /// ` of record NAME`, or empty for a listing.
        on: String,
        code: tonic::Code,
        message: String,
        endpoint: String,
    },
    #[error("containerd Images.{call}{on}: no answer within {deadline:?} (at {endpoint})")]
    Deadline {
        call: &'static str,
        on: String,
        deadline: Duration,
        endpoint: String,
    },
}

impl From<ContainerdError> for PinFailure {
    fn from(e: ContainerdError) -> Self {
        PinFailure(e.to_string())
    }
}

/// The image store of containerd's CRI namespace, through containerd's API.
#[derive(Clone)]
pub struct ContainerdPins {
    images: ImagesClient<Channel>,
    endpoint: CriEndpoint,
    deadline: Duration,
}

impl ContainerdPins {
    /// On the CRI's socket (containerd serves its own API there), each call under `deadline`.
    pub fn new(endpoint: &CriEndpoint, deadline: Duration) -> Self {
        let channel = crate::adapters::cri::connect(endpoint, deadline);
        Self {
            images: containerd_client::Client::from(channel).images(),
            endpoint: endpoint.clone(),
            deadline,
        }
    }

    fn request<T>(message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert(
            "containerd-namespace",
            tonic::metadata::MetadataValue::from_static(CRI_NAMESPACE),
        );
        request
    }

    async fn within<T, F>(
        &self,
        call: &'static str,
        name: Option<&str>,
        f: F,
    ) -> Result<T, ContainerdError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let on = name.map(|n| format!(" of record {n}")).unwrap_or_default();
        match tokio::time::timeout(self.deadline, f).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(ContainerdError::Call {
                call,
                on,
                code: status.code(),
                message: crate::model::printable::printable_line(
                    &status.message().chars().take(300).collect::<String>(),
                ),
                endpoint: self.endpoint.to_string(),
            }),
            Err(_) => Err(ContainerdError::Deadline {
                call,
                on,
                deadline: self.deadline,
                endpoint: self.endpoint.to_string(),
            }),
        }
    }

    /// Every record of the CRI's namespace.
    pub async fn list(&self) -> Result<Vec<ImageRecord>, ContainerdError> {
        let mut client = self.images.clone();
        let listed = self
            .within(
                "List",
                None,
                client.list(Self::request(ListImagesRequest::default())),
            )
            .await?;
        Ok(listed
            .images
            .into_iter()
            .map(|image| ImageRecord {
                target: image
                    .target
                    .as_ref()
                    .map(|t| t.digest.clone())
                    .unwrap_or_default(),
                pinned: image.labels.get(CRI_PINNED_LABEL).map(String::as_str)
                    == Some(CRI_PINNED_VALUE),
                ours: image.labels.get(OWN_PIN_LABEL).map(String::as_str) == Some(OWN_PIN_VALUE),
                name: image.name,
            })
            .collect())
    }

    /// Sets (`pin`) or removes both labels on the record `name`.
    pub async fn label(&self, name: &str, pin: bool) -> Result<(), ContainerdError> {
        let mut client = self.images.clone();
        let got = self
            .within(
                "Get",
                Some(name),
                client.get(Self::request(GetImageRequest {
                    name: name.to_string(),
                })),
            )
            .await?;
        let Some(mut image) = got.image else {
            return Ok(());
        };
        image.labels.remove(CRI_PINNED_LABEL);
        image.labels.remove(OWN_PIN_LABEL);
        if pin {
            image
                .labels
                .insert(CRI_PINNED_LABEL.into(), CRI_PINNED_VALUE.into());
            image
                .labels
                .insert(OWN_PIN_LABEL.into(), OWN_PIN_VALUE.into());
        }
        let request = UpdateImageRequest {
            image: Some(image),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![
                    format!("labels.{CRI_PINNED_LABEL}"),
                    format!("labels.{OWN_PIN_LABEL}"),
                ],
            }),
            source_date_epoch: None,
        };
        self.within("Update", Some(name), client.update(Self::request(request)))
            .await?;
        Ok(())
    }
}

impl ImagePins for ContainerdPins {
    fn records(&self) -> BoxFuture<'_, Result<Vec<ImageRecord>, PinFailure>> {
        Box::pin(async move { Ok(self.list().await?) })
    }

    fn apply<'a>(&'a self, action: &'a PinAction) -> BoxFuture<'a, Result<(), PinFailure>> {
        Box::pin(async move {
            match action {
                PinAction::Pin(name) => self.label(name, true).await?,
                PinAction::Unpin(name) => self.label(name, false).await?,
            }
            Ok(())
        })
    }
}
