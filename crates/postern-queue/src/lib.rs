//! The queue side of Postern that both doors share: `intake` (the one path by
//! which a message enters the queue, whether it came over SMTP or HTTP) and
//! the retry schedule the delivery scheduler follows.

pub mod body_budget;
pub mod dsn;
pub mod intake;
pub mod quarantine;
pub mod quota;
mod refusals;
pub mod retry;

pub use body_budget::{BodyBudget, BodyLease, Holder};
pub use intake::{
    Authorized, BounceReceiver, ClientInfo, ContentInspector, InboundAuthenticator, InboundVerdict,
    Intake, IntakeError, ReportReceiver, SenderAuthority, Submission,
};
pub use quota::{QuotaCheck, Quotas, Reservation, Reserve};
pub use retry::RetrySchedule;
