/*
 * Shared by the parts of mmc's companion plugin: the broker headers of the
 * mosquitto version it is built against, and the dynamic-security envelope
 * ({"commands":[...]} in, {"responses":[...]} out) that every API it serves uses.
 *
 * SPDX-License-Identifier: Apache-2.0
 */
#ifndef MMC_PLUGIN_H
#define MMC_PLUGIN_H

#include <stdbool.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <mosquitto.h>

#if LIBMOSQUITTO_VERSION_NUMBER >= 2001000
/* 2.1: mosquitto.h already includes the broker and plugin headers. */
#define MMC_BROKER_2_1 1
#else
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>
#endif

#define MMC_PLUGIN_NAME "mmc-client-control"
#define MMC_ERR_NOMEM "Internal error: out of memory"

/* One command of an API: appends exactly one entry to responses. */
typedef void (*mmc_command_fn)(cJSON *responses, const cJSON *command, const char *name,
		const char *correlation);

struct mmc_command {
	const char *name;
	mmc_command_fn run;
};

void mmc_add_error(cJSON *responses, const char *command, const char *error, const char *correlation);
/* Takes data (NULL: an empty object), freeing it when it cannot be added. */
void mmc_add_data(cJSON *responses, const char *command, cJSON *data, const char *correlation);
/* A non-empty UTF-8 string member, or NULL. */
const char *mmc_string_member(const cJSON *command, const char *name);
/* To every subscriber of topic (the broker's read ACLs apply), qos 0, not retained. */
void mmc_publish_json(const char *topic, const cJSON *tree);
/* Parse a request, run each command (names case-insensitive; commands ends with a NULL
 * name) and publish the responses on response_topic. */
void mmc_handle_request(const void *payload, uint32_t payloadlen, const char *response_topic,
		const struct mmc_command *commands);

/* Client inspection ($CONTROL/cedalo/inspect/v1), in mmc_inspect.c. */
int mmc_inspect_init(mosquitto_plugin_id_t *identifier, struct mosquitto_opt *options, int option_count);
void mmc_inspect_cleanup(mosquitto_plugin_id_t *identifier);

/* Subscriptions the plugin keeps for clients on mosquitto 2.0, in mmc_subtree.c. */
#ifndef MMC_BROKER_2_1
struct mmc_sub_options {
	uint8_t qos;
	bool no_local;
	bool retain_as_published;
	int send_retain;
};

/* Called once per client with a matching subscription, at the best qos among them. */
typedef void (*mmc_subs_deliver_fn)(const char *clientid, int qos, void *arg);

/* Start empty; at most max_subscriptions (0: no limit). */
void mmc_subs_init(size_t max_subscriptions);
/* Add, or replace the options of, the client's subscription to filter (a valid filter);
 * NULL, "Too many subscriptions" or MMC_ERR_NOMEM. */
const char *mmc_subs_add(const char *clientid, const char *filter, const struct mmc_sub_options *options);
/* Remove one subscription; none is no error. */
void mmc_subs_remove(const char *clientid, const char *filter);
void mmc_subs_remove_client(const char *clientid);
/* deliver for every client whose subscriptions match topic (a no_local one skips sender). */
void mmc_subs_match(const char *topic, const char *sender, mmc_subs_deliver_fn deliver, void *arg);
size_t mmc_subs_count(void);
void mmc_subs_free(void);
#endif

#endif
