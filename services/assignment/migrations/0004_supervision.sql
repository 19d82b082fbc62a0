-- Issue 17: supervision. The T-10 alerts (scheduler.case.supervisor_alert) land in the
-- branch supervisors' queue (GET /v1/branches/{branch}/alerts), shown with the case's
-- last call, which assignment now keeps from dispatch.task.completed.
CREATE TABLE assignment.supervisor_alerts (
    alert_id     uuid PRIMARY KEY,
    case_id      uuid NOT NULL,
    stage        text NOT NULL,
    raised_at    timestamptz NOT NULL
);
CREATE INDEX supervisor_alerts_by_case ON assignment.supervisor_alerts (case_id);

ALTER TABLE assignment.cases
    ADD COLUMN last_call_stage  text,
    ADD COLUMN last_outcome     text,
    ADD COLUMN last_outcome_at  timestamptz;
