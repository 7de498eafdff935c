// Realtime speech function: everything it needs in one resource group.
//
//   function app (Flex Consumption, Python 3.13) ──user-assigned identity──► host storage account
//                                                                          ► audio storage account
//                                                                          ► Azure OpenAI (gpt-realtime), and
//                                                                            optional extra accounts (the pool)
//                                                                          ► Application Insights
//
// Deployed at subscription scope (azd: `azd up`; or `az deployment sub create`, see docs/deploy.md).
// No keys anywhere: both storage accounts refuse shared keys, Azure OpenAI and Application Insights
// refuse local auth, and the app reaches all of them as its managed identity.
//
// Host and audio storage are separate accounts: the host needs Blob Data Owner (plus queue and table
// roles) on its account, and that must not extend to the audio; the audio account's lifecycle rule
// and its SAS-reachable endpoint then concern nothing but audio.
targetScope = 'subscription'

// ---------------------------------------------------------------- environment (azd)

@minLength(1)
@maxLength(64)
@description('Name of the environment (azd env name); names the resource group and seeds unique resource names.')
param environmentName string

@minLength(1)
@description('Region of the resource group and of every resource except, optionally, Azure OpenAI. Must offer Flex Consumption.')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Name of the resource group to create; default rg-<environmentName>.')
param resourceGroupName string = ''

@description('Object id of a developer (or pipeline) who gets the same data access as the app, to run it locally against these resources; empty for none.')
param principalId string = ''

@description('Type of `principalId`.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param principalType string = 'User'

// ---------------------------------------------------------------- function app

@description('Memory of each function app instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Upper bound on the number of instances the function app scales out to (Flex Consumption allows 40 to 1000).')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Concurrent requests one instance serves. A request mostly waits on the model and storage (async I/O), so one instance takes many.')
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = 16

// ---------------------------------------------------------------- audio

@description('Blob container for the WAV files (AUDIO_CONTAINER).')
@minLength(3)
@maxLength(63)
param audioContainerName string = 'audio'

@description('Days after which the audio (and its request record) is deleted by the lifecycle rule.')
@minValue(1)
@maxValue(3650)
param audioRetentionDays int = 7

@description('Lifetime of the SAS URL handed to callers, in minutes (AUDIO_URL_TTL_MINUTES); at most 7 days, and keep it within the retention.')
@minValue(1)
@maxValue(10080)
param audioUrlTtlMinutes int = 60

@description('Size of the blocks the audio is staged in, in bytes (AUDIO_BLOCK_SIZE_BYTES); bounds memory per request.')
@minValue(65536)
@maxValue(104857600)
param audioBlockSizeBytes int = 1048576

@description('Replication of the audio storage account.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
  'Standard_RAGZRS'
])
param audioStorageSku string = 'Standard_LRS'

// ---------------------------------------------------------------- realtime session

@description('Deadline for one whole request, in seconds (REALTIME_TIMEOUT_SECONDS). The HTTP front end closes idle requests after 230 s.')
@minValue(1)
@maxValue(230)
param realtimeTimeoutSeconds int = 120

@description('Default instructions of the realtime session (REALTIME_INSTRUCTIONS); a request may override them.')
@minLength(1)
param realtimeInstructions string = 'You are a helpful assistant. You respond by voice and text.'

@description('Default voice (REALTIME_VOICE); a request may override it.')
@allowed([
  'alloy'
  'ash'
  'ballad'
  'coral'
  'echo'
  'sage'
  'shimmer'
  'verse'
  'marin'
  'cedar'
])
param realtimeVoice string = 'alloy'

@description('Speaking speed of the answers in percent (REALTIME_SPEED 0.25 to 1.5 is 25 to 150; Bicep has no decimal numbers).')
@minValue(25)
@maxValue(150)
param realtimeSpeedPercent int = 100

@description('Upper bound on the output tokens of one answer (REALTIME_MAX_OUTPUT_TOKENS), 1 to 4096; 0 leaves it unset (the model\'s own limit).')
@minValue(0)
@maxValue(4096)
param realtimeMaxOutputTokens int = 0

@description('Realtime sessions each instance keeps open in advance (REALTIME_SPARE_SESSIONS, 0 to 8): a request takes one instead of waiting for the WebSocket handshake. Each is a session the deployment\'s quota counts (see README, spare sessions); 0 turns them off.')
@minValue(0)
@maxValue(8)
param realtimeSpareSessions int = 1

@description('Seconds after which a spare session is closed and replaced (REALTIME_SPARE_MAX_AGE_SECONDS, 1 to 1500; Azure ends sessions at 30 minutes).')
@minValue(1)
@maxValue(1500)
param realtimeSpareMaxAgeSeconds int = 600

@description('An instance that has had no request for this many seconds closes its spare sessions (REALTIME_SPARE_IDLE_SECONDS, 1 to 3600).')
@minValue(1)
@maxValue(3600)
param realtimeSpareIdleSeconds int = 300

@description('Bitrate of MP3 answers in kbit/s (AUDIO_MP3_BITRATE_KBPS); an MPEG-2 Layer III bitrate.')
@allowed([
  8
  16
  24
  32
  40
  48
  56
  64
  80
  96
  112
  128
  144
  160
])
param audioMp3BitrateKbps int = 48

@description('Largest spoken question accepted, in bytes (AUDIO_INPUT_MAX_BYTES).')
@minValue(65536)
@maxValue(104857600)
param audioInputMaxBytes int = 26214400

@description('Longest spoken question accepted, in seconds (AUDIO_INPUT_MAX_SECONDS).')
@minValue(1)
@maxValue(1800)
param audioInputMaxSeconds int = 300

@description('How long to wait for the transcript of a spoken question after the answer, in seconds (INPUT_TRANSCRIPT_GRACE_SECONDS).')
@minValue(0)
@maxValue(60)
param inputTranscriptGraceSeconds int = 5

@description('Serve the playground page, GET /api/playground (PLAYGROUND_ENABLED).')
param playgroundEnabled bool = false

// ---------------------------------------------------------------- Azure OpenAI

@description('Name of an existing Azure OpenAI / AI Services account to use instead of creating one; empty creates one.')
param existingOpenAiName string = ''

@description('Resource group of `existingOpenAiName` (same subscription); empty means the new resource group.')
param existingOpenAiResourceGroupName string = ''

@description('Region of a new Azure OpenAI account; empty means `location`. gpt-realtime is offered in few regions (e.g. eastus2, swedencentral).')
param openAiLocation string = ''

@description('Kind of a new account: OpenAI or AIServices.')
@allowed([
  'OpenAI'
  'AIServices'
])
param openAiKind string = 'OpenAI'

@description('Create the model deployment on the account; set false to use a deployment that already exists on an existing account.')
param createOpenAiDeployment bool = true

@description('Name of the realtime model deployment (AZURE_OPENAI_DEPLOYMENT_NAME).')
@minLength(1)
param openAiDeploymentName string = 'gpt-realtime'

@description('Realtime model to deploy.')
param openAiModelName string = 'gpt-realtime'

@description('Version of the realtime model.')
param openAiModelVersion string = '2025-08-28'

@description('SKU (deployment type) of the model deployment.')
@allowed([
  'GlobalStandard'
  'DataZoneStandard'
  'Standard'
])
param openAiDeploymentSku string = 'GlobalStandard'

@description('Capacity of the model deployment (thousands of tokens per minute); needs that much quota in the region. Also the primary account\'s weight in the pool.')
@minValue(1)
param openAiDeploymentCapacity int = 10

@description('Create the input-transcription deployment (spoken questions) on the primary account; false when that existing account already has it. The pool\'s extra accounts are new and always get theirs.')
param createTranscriptionDeployment bool = true

@description('Name of the input-transcription deployment (REALTIME_TRANSCRIPTION_MODEL): on Azure the session names a deployment of the resource, not a model.')
@minLength(1)
param transcriptionDeploymentName string = 'gpt-4o-mini-transcribe'

@description('Transcription model to deploy.')
param transcriptionModelName string = 'gpt-4o-mini-transcribe'

@description('Version of the transcription model.')
param transcriptionModelVersion string = '2025-03-20'

@description('SKU (deployment type) of the transcription deployments.')
@allowed([
  'GlobalStandard'
  'DataZoneStandard'
  'Standard'
])
param transcriptionDeploymentSku string = 'GlobalStandard'

@description('Capacity of each transcription deployment (thousands of tokens per minute).')
@minValue(1)
param transcriptionDeploymentCapacity int = 10

// ---------------------------------------------------------------- the pool of model backends

@description('Extra Azure OpenAI accounts, usually in other regions, each with its own quota: [{location, capacity, priority, skuName}]. The primary account has priority 1; the app tries the lowest priority first and spreads over the accounts of one priority by capacity. Empty: the primary account alone.')
param additionalOpenAiBackends array = []

@description('Failed handshakes in a row that open a backend\'s circuit (AZURE_OPENAI_CIRCUIT_FAILURES).')
@minValue(1)
@maxValue(100)
param openAiCircuitFailures int = 3

@description('Seconds a backend with an open circuit is left alone (AZURE_OPENAI_CIRCUIT_COOLDOWN_SECONDS).')
@minValue(1)
@maxValue(3600)
param openAiCircuitCooldownSeconds int = 30

// ---------------------------------------------------------------- names

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var useExistingOpenAi = !empty(existingOpenAiName)
var openAiName = useExistingOpenAi ? existingOpenAiName : 'oai-${resourceToken}'
var openAiResourceGroupName = (useExistingOpenAi && !empty(existingOpenAiResourceGroupName)) ? existingOpenAiResourceGroupName : rg.name
var deploymentContainerName = 'app-package'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: empty(resourceGroupName) ? 'rg-${environmentName}' : resourceGroupName
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-api-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
    location: location
    tags: tags
  }
}

// Functions host state and the deployment package.
module hostStorage 'modules/storage-account.bicep' = {
  name: 'host-storage'
  scope: rg
  params: {
    name: 'sthost${resourceToken}'
    location: location
    tags: tags
    containers: [
      deploymentContainerName
    ]
  }
}

// The audio, deleted after `audioRetentionDays`.
module audioStorage 'modules/storage-account.bicep' = {
  name: 'audio-storage'
  scope: rg
  params: {
    name: 'staudio${resourceToken}'
    location: location
    tags: tags
    skuName: audioStorageSku
    containers: [
      audioContainerName
    ]
    deleteAfterDays: audioRetentionDays
    deletePrefixes: [
      '${audioContainerName}/'
    ]
  }
}

module openAiAccount 'modules/openai-account.bicep' = if (!useExistingOpenAi) {
  name: 'openai-account'
  scope: rg
  params: {
    name: openAiName
    location: empty(openAiLocation) ? location : openAiLocation
    tags: tags
    kind: openAiKind
  }
}

module openAi 'modules/openai-model.bicep' = {
  name: 'openai-model'
  scope: resourceGroup(openAiResourceGroupName)
  params: {
    accountName: openAiName
    createDeployment: createOpenAiDeployment
    deploymentName: openAiDeploymentName
    modelName: openAiModelName
    modelVersion: openAiModelVersion
    skuName: openAiDeploymentSku
    capacity: openAiDeploymentCapacity
    createTranscriptionDeployment: createTranscriptionDeployment
    transcriptionDeploymentName: transcriptionDeploymentName
    transcriptionModelName: transcriptionModelName
    transcriptionModelVersion: transcriptionModelVersion
    transcriptionSkuName: transcriptionDeploymentSku
    transcriptionCapacity: transcriptionDeploymentCapacity
    appPrincipalId: identity.outputs.principalId
    userPrincipalId: principalId
    userPrincipalType: principalType
  }
  // The account must exist first; the resource group too when the account is new (scope by name).
  dependsOn: [
    rg
    openAiAccount
  ]
}

module openAiPool 'modules/openai-pool.bicep' = {
  name: 'openai-pool'
  scope: rg
  params: {
    namePrefix: 'oai-${resourceToken}'
    tags: tags
    kind: openAiKind
    backends: additionalOpenAiBackends
    deploymentName: openAiDeploymentName
    modelName: openAiModelName
    modelVersion: openAiModelVersion
    transcriptionDeploymentName: transcriptionDeploymentName
    transcriptionModelName: transcriptionModelName
    transcriptionModelVersion: transcriptionModelVersion
    transcriptionSkuName: transcriptionDeploymentSku
    transcriptionCapacity: transcriptionDeploymentCapacity
    appPrincipalId: identity.outputs.principalId
    userPrincipalId: principalId
    userPrincipalType: principalType
  }
}

module roles 'modules/roles.bicep' = {
  name: 'roles'
  scope: rg
  params: {
    hostStorageAccountName: hostStorage.outputs.name
    audioStorageAccountName: audioStorage.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    appPrincipalId: identity.outputs.principalId
    userPrincipalId: principalId
    userPrincipalType: principalType
  }
}

// The model backends (AZURE_OPENAI_BACKENDS): the primary account at priority 1, then the extra accounts.
// Endpoints only, never a key: every backend is reached with the app's managed identity.
var openAiBackends = concat([
  {
    name: 'primary'
    endpoint: openAi.outputs.endpoint
    deployment: openAiDeploymentName
    priority: 1
    weight: min(openAiDeploymentCapacity, 1000)
  }
], openAiPool.outputs.backends)

// The settings the app code reads (realtime_speech/settings.py), as strings. The function-app module adds
// AZURE_CLIENT_ID and the Application Insights settings with the host settings. Never set here:
// AZURE_OPENAI_API_KEY (local use only; the app authenticates with its managed identity),
// AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_DEPLOYMENT_NAME (AZURE_OPENAI_BACKENDS replaces them) and
// OTEL_EXPORTER_OTLP_ENDPOINT (the OTLP exporter, an alternative to Application Insights).
// MAX_CONCURRENT_SESSIONS follows the instance memory: the app's default (4) is sized for 512 MB, so
// 4 sessions per 512 MB (16 at 2048 MB, 32 at 4096 MB).
var maxConcurrentSessions = instanceMemoryMB / 128

var appSettings = {
  AZURE_OPENAI_BACKENDS: string(openAiBackends)
  AZURE_OPENAI_CIRCUIT_FAILURES: string(openAiCircuitFailures)
  AZURE_OPENAI_CIRCUIT_COOLDOWN_SECONDS: string(openAiCircuitCooldownSeconds)
  AUDIO_STORAGE_ACCOUNT_URL: audioStorage.outputs.blobEndpoint
  AUDIO_CONTAINER: audioContainerName
  AUDIO_URL_TTL_MINUTES: string(audioUrlTtlMinutes)
  AUDIO_BLOCK_SIZE_BYTES: string(audioBlockSizeBytes)
  REALTIME_TIMEOUT_SECONDS: string(realtimeTimeoutSeconds)
  MAX_CONCURRENT_SESSIONS: string(maxConcurrentSessions)
  REALTIME_INSTRUCTIONS: realtimeInstructions
  REALTIME_VOICE: realtimeVoice
  REALTIME_SPEED: '${realtimeSpeedPercent / 100}.${padLeft(string(realtimeSpeedPercent % 100), 2, '0')}'
  REALTIME_MAX_OUTPUT_TOKENS: (realtimeMaxOutputTokens == 0) ? '' : string(realtimeMaxOutputTokens)
  REALTIME_TRANSCRIPTION_MODEL: transcriptionDeploymentName
  REALTIME_SPARE_SESSIONS: string(realtimeSpareSessions)
  REALTIME_SPARE_MAX_AGE_SECONDS: string(realtimeSpareMaxAgeSeconds)
  REALTIME_SPARE_IDLE_SECONDS: string(realtimeSpareIdleSeconds)
  AUDIO_MP3_BITRATE_KBPS: string(audioMp3BitrateKbps)
  AUDIO_INPUT_MAX_BYTES: string(audioInputMaxBytes)
  AUDIO_INPUT_MAX_SECONDS: string(audioInputMaxSeconds)
  INPUT_TRANSCRIPT_GRACE_SECONDS: string(inputTranscriptGraceSeconds)
  PLAYGROUND_ENABLED: playgroundEnabled ? 'true' : 'false'
}

module functionApp 'modules/function-app.bicep' = {
  name: 'function-app'
  scope: rg
  params: {
    name: 'func-api-${resourceToken}'
    planName: 'plan-${resourceToken}'
    location: location
    tags: tags
    serviceName: 'api'
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    hostStorageAccountName: hostStorage.outputs.name
    deploymentContainerName: deploymentContainerName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    httpPerInstanceConcurrency: httpPerInstanceConcurrency
    appSettings: appSettings
  }
  // The app starts with these roles in place, so its first requests do not fail on access.
  dependsOn: [
    roles
    openAi
    openAiPool
  ]
}

// ---------------------------------------------------------------- outputs (azd stores them in .azure/<env>/.env)

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output SPEECH_API_URL string = 'https://${functionApp.outputs.defaultHostName}/api/speech'
output AZURE_OPENAI_ENDPOINT string = openAi.outputs.endpoint
output AZURE_OPENAI_DEPLOYMENT_NAME string = openAiDeploymentName
output AZURE_OPENAI_BACKENDS string = string(openAiBackends)
output REALTIME_TRANSCRIPTION_MODEL string = transcriptionDeploymentName
output AUDIO_STORAGE_ACCOUNT_NAME string = audioStorage.outputs.name
output AUDIO_STORAGE_ACCOUNT_URL string = audioStorage.outputs.blobEndpoint
output AUDIO_CONTAINER string = audioContainerName
output HOST_STORAGE_ACCOUNT_NAME string = hostStorage.outputs.name
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
