//! The zone's dataplane service (`dp.proto`), beside ADS on the xDS port:
//! `meridian-dp` registers the dataplane it runs beside before its proxy
//! connects, holds the registration (the call stays open: the dataplane is
//! present while it is), and removes it when it stops; an agent of a gRPC
//! application also follows its mesh mTLS material (`Certificates`). Calls
//! authenticate as streams do;
//! what a token allows is checked by [`ZoneXds::register_from_proxy`] and
//! [`ZoneXds::deregister`].

use futures::StreamExt;
use meridian_core::decode::MAX_RESOURCE_BYTES;
use meridian_core::FieldPath;
use meridian_core::ResourceType;
use meridian_proto::dp::dataplanes_server::{Dataplanes, DataplanesServer};
use meridian_proto::dp::{
    CertificateBundle, CertificatesRequest, DeregisterRequest, DeregisterResponse, RegisterRequest, RegisterResponse,
};
use meridian_store::Event;
use meridian_xds::source::{ConfigSource, ProxyId};
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use crate::xds::ZoneXds;

/// The tonic service over the zone's xDS side.
pub struct DataplaneService {
    xds: ZoneXds,
}

impl DataplaneService {
    pub fn new(xds: ZoneXds) -> DataplanesServer<Self> {
        DataplanesServer::new(DataplaneService { xds })
    }
}

fn proxy_id(mesh: &str, name: &str) -> Result<ProxyId, Status> {
    ProxyId::parse(&format!("{mesh}.{name}")).map_err(Status::invalid_argument)
}

#[tonic::async_trait]
impl Dataplanes for DataplaneService {
    type RegisterStream = futures::stream::BoxStream<'static, Result<RegisterResponse, Status>>;

    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Self::RegisterStream>, Status> {
        let credential = self.xds.authenticate(request.metadata()).await?;
        let req = request.into_inner();
        if req.dataplane_json.len() > MAX_RESOURCE_BYTES {
            return Err(Status::invalid_argument(format!(
                "dataplane_json is {} bytes, more than the limit of {MAX_RESOURCE_BYTES}",
                req.dataplane_json.len()
            )));
        }
        let id = proxy_id(&req.mesh, &req.name)?;
        let fields: serde_json::Value = serde_json::from_str(&req.dataplane_json)
            .map_err(|e| Status::invalid_argument(format!("dataplane_json is not JSON: {e}")))?;
        let (_, outcome) = self
            .xds
            .register_from_proxy(&credential, &id, fields, &FieldPath::new("dataplane"))
            .await?;
        // Present while the call is open: the guard lives in the stream,
        // which tonic drops when the agent goes away.
        let (guard, ended) = self.xds.hold(id, &credential);
        let first = RegisterResponse {
            outcome: outcome.as_str().to_string(),
        };
        let stream = futures::stream::once(async move { Ok(first) }).chain(futures::stream::once(async move {
            let _present = guard;
            Err(ended.await)
        }));
        Ok(Response::new(stream.boxed()))
    }

    type CertificatesStream = futures::stream::BoxStream<'static, Result<CertificateBundle, Status>>;

    async fn certificates(
        &self,
        request: Request<CertificatesRequest>,
    ) -> Result<Response<Self::CertificatesStream>, Status> {
        let credential = self.xds.authenticate(request.metadata()).await?;
        let req = request.into_inner();
        let id = proxy_id(&req.mesh, &req.name)?;
        self.xds.authorize_registered(&credential, &id)?;
        let first = self.xds.certificate_bundle(&id)?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let xds = self.xds.clone();
        let (guard, ended) = self.xds.hold(id.clone(), &credential);
        tokio::spawn(async move {
            let _present = guard;
            let mut events = xds.manager().cache().subscribe();
            let mut changes = xds.mtls().changed();
            tokio::pin!(ended);
            let mut last = first.clone();
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    status = &mut ended => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    () = tx.closed() => return,
                    ev = events.recv() => match ev {
                        Ok(ev) if !concerns(&ev, &id) => continue,
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    changed = changes.recv() => match changed {
                        Ok(c) if !c.meshes.contains(&id.mesh) && !c.proxies.contains(&id) => continue,
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
                match xds.certificate_bundle(&id) {
                    Ok(b) if b == last => {}
                    Ok(b) => {
                        last = b.clone();
                        if tx.send(Ok(b)).await.is_err() {
                            return;
                        }
                    }
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx).boxed()))
    }

    async fn deregister(&self, request: Request<DeregisterRequest>) -> Result<Response<DeregisterResponse>, Status> {
        let credential = self.xds.authenticate(request.metadata()).await?;
        let req = request.into_inner();
        let id = proxy_id(&req.mesh, &req.name)?;
        let removed = self.xds.deregister(&credential, &id).await?;
        Ok(Response::new(DeregisterResponse { removed }))
    }
}

/// Whether a change of the replica may change what dataplane `id`'s
/// certificate bundle holds.
fn concerns(ev: &Event, id: &ProxyId) -> bool {
    let key = ev.key();
    match key.kind {
        ResourceType::Mesh => key.name == id.mesh,
        ResourceType::CertificateAuthority | ResourceType::ZoneCertificate => key.mesh.as_deref() == Some(&id.mesh),
        ResourceType::Dataplane => key.mesh.as_deref() == Some(&id.mesh) && key.name == id.name,
        _ => false,
    }
}
