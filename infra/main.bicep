// Realtime speech function: everything it needs in one resource group.
//
//   function app (Flex Consumption, Python 3.11) ──user-assigned identity──► host storage account
//                                                                          ► audio storage account
//                                                                          ► Azure OpenAI (gpt-realtime)
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

@description('Model that transcribes input audio in the session (REALTIME_TRANSCRIPTION_MODEL).')
@minLength(1)
param realtimeTranscriptionModel string = 'whisper-1'

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

@description('Capacity of the model deployment (thousands of tokens per minute); needs that much quota in the region.')
@minValue(1)
param openAiDeploymentCapacity int = 10

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

// The settings the app code reads (realtime_speech/settings.py), as strings. AZURE_CLIENT_ID is set by
// the function-app module with the host settings; AZURE_OPENAI_API_KEY is for local use only and is
// never set here: the app authenticates with its managed identity.
var appSettings = {
  AZURE_OPENAI_ENDPOINT: openAi.outputs.endpoint
  AZURE_OPENAI_DEPLOYMENT_NAME: openAiDeploymentName
  AUDIO_STORAGE_ACCOUNT_URL: audioStorage.outputs.blobEndpoint
  AUDIO_CONTAINER: audioContainerName
  AUDIO_URL_TTL_MINUTES: string(audioUrlTtlMinutes)
  AUDIO_BLOCK_SIZE_BYTES: string(audioBlockSizeBytes)
  REALTIME_TIMEOUT_SECONDS: string(realtimeTimeoutSeconds)
  REALTIME_INSTRUCTIONS: realtimeInstructions
  REALTIME_VOICE: realtimeVoice
  REALTIME_TRANSCRIPTION_MODEL: realtimeTranscriptionModel
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
output AUDIO_STORAGE_ACCOUNT_NAME string = audioStorage.outputs.name
output AUDIO_STORAGE_ACCOUNT_URL string = audioStorage.outputs.blobEndpoint
output AUDIO_CONTAINER string = audioContainerName
output HOST_STORAGE_ACCOUNT_NAME string = hostStorage.outputs.name
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
