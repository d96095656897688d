//! The resource types Meridian knows, with their scope, REST plural and
//! direction of synchronisation (DESIGN §3).

use std::fmt;
use std::str::FromStr;

/// Every resource type of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    Mesh,
    MeshTimeout,
    MeshRetry,
    MeshCircuitBreaker,
    MeshHealthCheck,
    MeshTrafficPermission,
    MeshHTTPRoute,
    MeshTCPRoute,
    MeshLoadBalancingStrategy,
    MeshAccessLog,
    MeshFaultInjection,
    MeshRateLimit,
    MeshTrace,
    MeshMetric,
    MeshProxyPatch,
    Dataplane,
    DataplaneInsight,
    ZoneIngress,
    Zone,
    ZoneInsight,
    DataplaneTokenKey,
    DataplaneTokenRevocation,
    Secret,
    CertificateAuthority,
    ZoneCertificateRequest,
    ZoneCertificate,
    AccessRole,
    AccessRoleBinding,
    UserTokenKey,
    UserTokenRevocation,
}

/// Which side of a multi-zone deployment owns (writes) a type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Written at the global (or a standalone zone), synced to zones.
    Global,
    /// Written at a zone, synced up to the global.
    Zone,
    /// Kept by the global itself; read-only through the API.
    System,
}

struct Info {
    ty: ResourceType,
    name: &'static str,
    plural: &'static str,
    mesh_scoped: bool,
    policy: bool,
    owner: Owner,
    read_only: bool,
    /// For [`Owner::Global`] types: whether zones receive them.
    synced: bool,
}

const fn info(
    ty: ResourceType,
    name: &'static str,
    plural: &'static str,
    mesh_scoped: bool,
    policy: bool,
    owner: Owner,
    read_only: bool,
) -> Info {
    Info {
        ty,
        name,
        plural,
        mesh_scoped,
        policy,
        owner,
        read_only,
        synced: true,
    }
}

/// A type of the global that stays there: zones never receive it.
const fn kept_at_global(mut i: Info) -> Info {
    i.synced = false;
    i
}

use Owner::{Global as G, System as S, Zone as Z};
use ResourceType as T;

const TABLE: &[Info] = &[
    info(T::Mesh, "Mesh", "meshes", false, false, G, false),
    info(T::MeshTimeout, "MeshTimeout", "meshtimeouts", true, true, G, false),
    info(T::MeshRetry, "MeshRetry", "meshretries", true, true, G, false),
    info(
        T::MeshCircuitBreaker,
        "MeshCircuitBreaker",
        "meshcircuitbreakers",
        true,
        true,
        G,
        false,
    ),
    info(
        T::MeshHealthCheck,
        "MeshHealthCheck",
        "meshhealthchecks",
        true,
        true,
        G,
        false,
    ),
    info(
        T::MeshTrafficPermission,
        "MeshTrafficPermission",
        "meshtrafficpermissions",
        true,
        true,
        G,
        false,
    ),
    info(
        T::MeshHTTPRoute,
        "MeshHTTPRoute",
        "meshhttproutes",
        true,
        true,
        G,
        false,
    ),
    info(T::MeshTCPRoute, "MeshTCPRoute", "meshtcproutes", true, true, G, false),
    info(
        T::MeshLoadBalancingStrategy,
        "MeshLoadBalancingStrategy",
        "meshloadbalancingstrategies",
        true,
        true,
        G,
        false,
    ),
    info(
        T::MeshAccessLog,
        "MeshAccessLog",
        "meshaccesslogs",
        true,
        true,
        G,
        false,
    ),
    info(
        T::MeshFaultInjection,
        "MeshFaultInjection",
        "meshfaultinjections",
        true,
        true,
        G,
        false,
    ),
    info(
        T::MeshRateLimit,
        "MeshRateLimit",
        "meshratelimits",
        true,
        true,
        G,
        false,
    ),
    info(T::MeshTrace, "MeshTrace", "meshtraces", true, true, G, false),
    info(T::MeshMetric, "MeshMetric", "meshmetrics", true, true, G, false),
    info(
        T::MeshProxyPatch,
        "MeshProxyPatch",
        "meshproxypatches",
        true,
        true,
        G,
        false,
    ),
    info(T::Dataplane, "Dataplane", "dataplanes", true, false, Z, false),
    info(
        T::DataplaneInsight,
        "DataplaneInsight",
        "dataplane-insights",
        true,
        false,
        Z,
        true,
    ),
    info(T::ZoneIngress, "ZoneIngress", "zoneingresses", false, false, Z, false),
    info(T::Zone, "Zone", "zones", false, false, S, false),
    info(T::ZoneInsight, "ZoneInsight", "zone-insights", false, false, S, true),
    // Written by the token issuer of the global (or a standalone zone), never
    // through PUT; synced to zones, which verify dataplane tokens with them.
    info(
        T::DataplaneTokenKey,
        "DataplaneTokenKey",
        "dataplane-token-keys",
        true,
        false,
        G,
        true,
    ),
    info(
        T::DataplaneTokenRevocation,
        "DataplaneTokenRevocation",
        "dataplane-token-revocations",
        true,
        false,
        G,
        true,
    ),
    // A provided CA's certificate and key live here; never synced, so the
    // key never leaves the global.
    kept_at_global(info(T::Secret, "Secret", "secrets", true, false, G, false)),
    // Written by the global's certificate authority (or a standalone
    // zone's): a backend's root certificate, and the intermediates it signs
    // for zones; zones ask for those with requests of their own.
    info(
        T::CertificateAuthority,
        "CertificateAuthority",
        "certificate-authorities",
        true,
        false,
        G,
        true,
    ),
    info(
        T::ZoneCertificateRequest,
        "ZoneCertificateRequest",
        "zone-certificate-requests",
        true,
        false,
        Z,
        true,
    ),
    info(
        T::ZoneCertificate,
        "ZoneCertificate",
        "zone-certificates",
        true,
        false,
        G,
        true,
    ),
    // Who may do what through the API; written at the global (or a
    // standalone zone), enforced by every control plane.
    info(T::AccessRole, "AccessRole", "access-roles", false, false, G, false),
    info(
        T::AccessRoleBinding,
        "AccessRoleBinding",
        "access-role-bindings",
        false,
        false,
        G,
        false,
    ),
    // The public halves of the keys signing user tokens, and revoked user
    // token ids: written by the global's issuer, verified against by zones.
    info(
        T::UserTokenKey,
        "UserTokenKey",
        "user-token-keys",
        false,
        false,
        G,
        true,
    ),
    info(
        T::UserTokenRevocation,
        "UserTokenRevocation",
        "user-token-revocations",
        false,
        false,
        G,
        true,
    ),
];

impl ResourceType {
    /// All types, in a stable order.
    pub const ALL: [ResourceType; 30] = [
        T::Mesh,
        T::MeshTimeout,
        T::MeshRetry,
        T::MeshCircuitBreaker,
        T::MeshHealthCheck,
        T::MeshTrafficPermission,
        T::MeshHTTPRoute,
        T::MeshTCPRoute,
        T::MeshLoadBalancingStrategy,
        T::MeshAccessLog,
        T::MeshFaultInjection,
        T::MeshRateLimit,
        T::MeshTrace,
        T::MeshMetric,
        T::MeshProxyPatch,
        T::Dataplane,
        T::DataplaneInsight,
        T::ZoneIngress,
        T::Zone,
        T::ZoneInsight,
        T::DataplaneTokenKey,
        T::DataplaneTokenRevocation,
        T::Secret,
        T::CertificateAuthority,
        T::ZoneCertificateRequest,
        T::ZoneCertificate,
        T::AccessRole,
        T::AccessRoleBinding,
        T::UserTokenKey,
        T::UserTokenRevocation,
    ];

    fn info(self) -> &'static Info {
        // TABLE is in the same order as the enum; the test below keeps it so.
        &TABLE[self as usize]
    }

    /// The type name as written in `type:` / `kind:` (`MeshTimeout`).
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The REST plural (`meshtimeouts`).
    pub fn plural(self) -> &'static str {
        self.info().plural
    }

    /// Whether resources of this type live inside a mesh.
    pub fn is_mesh_scoped(self) -> bool {
        self.info().mesh_scoped
    }

    /// Whether this is a `targetRef` policy (fields under `spec`).
    pub fn is_policy(self) -> bool {
        self.info().policy
    }

    /// Which side writes this type.
    pub fn owner(self) -> Owner {
        self.info().owner
    }

    /// Whether the HTTP API refuses writes of this type everywhere.
    pub fn is_read_only(self) -> bool {
        self.info().read_only
    }

    /// Whether the global (or a standalone zone) writes this type and zones
    /// receive it over KDS.
    pub fn is_synced_to_zones(self) -> bool {
        self.owner() == Owner::Global && self.info().synced
    }

    /// All policy types.
    pub fn policies() -> impl Iterator<Item = ResourceType> {
        Self::ALL.into_iter().filter(|t| t.is_policy())
    }

    /// Looks a type up by its REST plural.
    pub fn from_plural(plural: &str) -> Option<ResourceType> {
        TABLE.iter().find(|i| i.plural == plural).map(|i| i.ty)
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error of parsing a type name that Meridian does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown resource type {0:?}")]
pub struct UnknownType(pub String);

impl FromStr for ResourceType {
    type Err = UnknownType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TABLE
            .iter()
            .find(|i| i.name == s)
            .map(|i| i.ty)
            .ok_or_else(|| UnknownType(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_enum_order() {
        for (i, ty) in ResourceType::ALL.iter().enumerate() {
            assert_eq!(TABLE[i].ty, *ty);
            assert_eq!(ty.name().parse::<ResourceType>(), Ok(*ty));
            assert_eq!(ResourceType::from_plural(ty.plural()), Some(*ty));
        }
        assert_eq!(TABLE.len(), ResourceType::ALL.len());
    }

    #[test]
    fn fourteen_policies() {
        assert_eq!(ResourceType::policies().count(), 14);
    }
}
