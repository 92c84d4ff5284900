#!/usr/bin/env bash
# Example: ACLs for a SASL/SCRAM Kafka cluster, one principal per service, matching the signing
# principals of `lepton keys principals` (ingest, governance, trainer, serving, monitor,
# operator).
# Each service then runs with
#   LEPTON_KAFKA_SECURITY_PROTOCOL=SASL_SSL  LEPTON_KAFKA_SASL_MECHANISM=SCRAM-SHA-512
#   LEPTON_KAFKA_SASL_USERNAME=lepton-<service>  LEPTON_KAFKA_SASL_PASSWORD=<its own secret>
#   LEPTON_KAFKA_SSL_CA_LOCATION=/run/secrets/kafka-ca.pem
# Run with an admin client config: ./acls.sh broker:9093 admin.properties
# (topic prefix `lepton.`; transactional ids and groups as the services derive them)
set -euo pipefail
bootstrap=${1:?bootstrap server}
config=${2:?admin client properties}
p=${LEPTON_TOPIC_PREFIX:-lepton.}
acl() { kafka-acls.sh --bootstrap-server "$bootstrap" --command-config "$config" --add "$@"; }

# user: read topics | write topics | group prefix | transactional id prefix
grant() {
  local user=$1 reads=$2 writes=$3 group=$4 txn=$5
  for t in $reads; do acl --allow-principal "User:$user" --operation Read --operation Describe --topic "$p$t"; done
  for t in $writes; do acl --allow-principal "User:$user" --operation Write --operation Describe --topic "$p$t"; done
  acl --allow-principal "User:$user" --operation Read --group "$group" --resource-pattern-type prefixed
  if [ -n "$txn" ]; then
    acl --allow-principal "User:$user" --operation Write --operation Describe \
      --transactional-id "$txn" --resource-pattern-type prefixed
  fi
  acl --allow-principal "User:$user" --operation IdempotentWrite --cluster
}

grant lepton-ingest "events.raw ingest.offsets" \
  "events.clean events.rejected ingest.offsets audit.requests" "${p}ingest" "${p}ingest"
grant lepton-governance "events.clean audit.requests governance.offsets" \
  "events.governed audit.log events.rejected governance.offsets" "${p}governance" "${p}governance"
grant lepton-trainer "events.governed" "models.updates audit.requests events.rejected" \
  "lepton-trainer-" ""
grant lepton-serving "models.updates predictions.requests" \
  "predictions.results predictions.log audit.requests" "lepton-serving" ""
# monitor: reads the prediction log and labels; its scaling advice reads every group's input
# topics, positions topics and committed offsets (Describe on the groups, never their Read)
grant lepton-monitor "predictions.log events.governed events.raw events.clean audit.requests \
  predictions.requests ingest.offsets governance.offsets" "audit.requests" "lepton-monitor" ""
for g in "${p}" lepton-; do
  acl --allow-principal User:lepton-monitor --operation Describe --group "$g" \
    --resource-pattern-type prefixed
done
# operators: read everything (audit verify, dlq), publish rollouts and decisions
grant lepton-operator "events.rejected audit.log models.updates predictions.results" \
  "models.updates audit.requests" "lepton-operator" ""
# topic creation (`lepton topics create`) needs an admin: run it as the cluster admin
