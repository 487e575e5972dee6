//! etcd's Cluster service: MemberList, MemberAdd, MemberRemove over Raft membership.

use std::sync::Arc;

use etcd_client::proto::{
    PbClusterServer, PbClusterService, PbMember, PbMemberAddRequest, PbMemberAddResponse,
    PbMemberListRequest, PbMemberListResponse, PbMemberPromoteRequest, PbMemberPromoteResponse,
    PbMemberRemoveRequest, PbMemberRemoveResponse, PbMemberUpdateRequest, PbMemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::{allow, convert, status};

// etcd's Cluster replies carry no revision: their headers are built with revision 0.
use crate::auth::Operation;
use crate::metrics::Metrics;
use crate::node::{MemberInfo, Node};

/// The Cluster service of one member.
#[derive(Debug, Clone)]
pub struct Cluster {
    node: Arc<Node>,
    metrics: Arc<Metrics>,
}

impl Cluster {
    /// Serves `node`'s membership.
    pub fn new(node: Arc<Node>, metrics: Arc<Metrics>) -> PbClusterServer<Self> {
        PbClusterServer::new(Self { node, metrics })
    }

    fn members(&self) -> Vec<PbMember> {
        self.node.members().into_iter().map(member).collect()
    }
}

fn member(m: MemberInfo) -> PbMember {
    PbMember {
        id: m.id,
        name: m.name,
        peer_ur_ls: m.peer_urls,
        client_ur_ls: m.client_urls,
        is_learner: m.is_learner,
    }
}

#[tonic::async_trait]
impl PbClusterService for Cluster {
    async fn member_add(
        &self,
        req: Request<PbMemberAddRequest>,
    ) -> Result<Response<PbMemberAddResponse>, Status> {
        let _t = self.metrics.rpc("MemberAdd");
        allow(&self.node, &req, Operation::Administer)?;
        let req = req.into_inner();
        if req.peer_ur_ls.is_empty() {
            return Err(Status::invalid_argument("etcdserver: peer URLs are empty"));
        }
        let id = self
            .node
            .add_member(req.peer_ur_ls.clone(), req.is_learner)
            .await
            .map_err(status)?;
        Ok(Response::new(PbMemberAddResponse {
            header: convert::header(self.node.header(0)),
            member: Some(PbMember {
                id,
                name: String::new(),
                peer_ur_ls: req.peer_ur_ls,
                client_ur_ls: vec![],
                is_learner: req.is_learner,
            }),
            members: self.members(),
        }))
    }

    async fn member_remove(
        &self,
        req: Request<PbMemberRemoveRequest>,
    ) -> Result<Response<PbMemberRemoveResponse>, Status> {
        let _t = self.metrics.rpc("MemberRemove");
        allow(&self.node, &req, Operation::Administer)?;
        self.node
            .remove_member(req.into_inner().id)
            .await
            .map_err(status)?;
        Ok(Response::new(PbMemberRemoveResponse {
            header: convert::header(self.node.header(0)),
            members: self.members(),
        }))
    }

    async fn member_update(
        &self,
        req: Request<PbMemberUpdateRequest>,
    ) -> Result<Response<PbMemberUpdateResponse>, Status> {
        allow(&self.node, &req, Operation::Administer)?;
        Err(Status::unimplemented("MemberUpdate is not served"))
    }

    async fn member_list(
        &self,
        req: Request<PbMemberListRequest>,
    ) -> Result<Response<PbMemberListResponse>, Status> {
        let _t = self.metrics.rpc("MemberList");
        allow(&self.node, &req, Operation::ReadCluster)?;
        Ok(Response::new(PbMemberListResponse {
            header: convert::header(self.node.header(0)),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        req: Request<PbMemberPromoteRequest>,
    ) -> Result<Response<PbMemberPromoteResponse>, Status> {
        allow(&self.node, &req, Operation::Administer)?;
        Err(Status::unimplemented("MemberPromote is not served"))
    }
}
