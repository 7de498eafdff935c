// Extra Azure OpenAI accounts for the app's pool of model backends, usually in other regions (each region
// has its own quota). Each is a hardened account (openai-account.bicep: custom subdomain, local auth off)
// with the same realtime and transcription deployments as the primary account (always created: the accounts
// are new, whatever the primary account, which may exist already, needs) and the same roles
// (openai-model.bicep: Cognitive Services OpenAI User for the app's identity). The `backends` output lists
// them as AZURE_OPENAI_BACKENDS entries; main.bicep puts the primary account first.

@description('Prefix of the account names; account n is <prefix>-<n>, also its custom subdomain.')
param namePrefix string

@description('Tags for the resources.')
param tags object = {}

@description('Kind of the accounts: OpenAI or AIServices.')
@allowed([
  'OpenAI'
  'AIServices'
])
param kind string = 'OpenAI'

@description('One item per extra account: {location, capacity, priority, skuName}. `priority` as in AZURE_OPENAI_BACKENDS (1 to 100, lower is tried first); `capacity` of the realtime deployment (thousands of tokens per minute, within the region\'s quota), also its weight within its priority; `skuName` GlobalStandard, DataZoneStandard or Standard.')
param backends array = []

@description('Name of the realtime deployment on every account.')
param deploymentName string

@description('Realtime model to deploy.')
param modelName string

@description('Version of the realtime model.')
param modelVersion string

@description('Name of the input-transcription deployment on every account.')
param transcriptionDeploymentName string

@description('Transcription model to deploy.')
param transcriptionModelName string

@description('Version of the transcription model.')
param transcriptionModelVersion string

@description('Deployment SKU of the transcription model.')
param transcriptionSkuName string

@description('Capacity of each transcription deployment.')
@minValue(1)
param transcriptionCapacity int

@description('Principal id of the function app\'s managed identity.')
param appPrincipalId string

@description('Principal id of a developer or pipeline that also gets access; empty for none.')
param userPrincipalId string = ''

@description('Type of `userPrincipalId`.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param userPrincipalType string = 'User'

module accounts 'openai-account.bicep' = [for (backend, i) in backends: {
  name: 'openai-account-${i + 1}'
  params: {
    name: '${namePrefix}-${i + 1}'
    location: backend.location
    tags: tags
    kind: kind
  }
}]

module models 'openai-model.bicep' = [for (backend, i) in backends: {
  name: 'openai-model-${i + 1}'
  params: {
    accountName: accounts[i].outputs.name
    createDeployment: true
    deploymentName: deploymentName
    modelName: modelName
    modelVersion: modelVersion
    skuName: backend.skuName
    capacity: backend.capacity
    createTranscriptionDeployment: true
    transcriptionDeploymentName: transcriptionDeploymentName
    transcriptionModelName: transcriptionModelName
    transcriptionModelVersion: transcriptionModelVersion
    transcriptionSkuName: transcriptionSkuName
    transcriptionCapacity: transcriptionCapacity
    appPrincipalId: appPrincipalId
    userPrincipalId: userPrincipalId
    userPrincipalType: userPrincipalType
  }
}]

// AZURE_OPENAI_BACKENDS entries (realtime_speech.settings.BackendSettings); weight is bounded to 1000 there.
output backends array = [for (backend, i) in backends: {
  name: '${backend.location}-${i + 1}'
  endpoint: models[i].outputs.endpoint
  deployment: deploymentName
  priority: backend.priority
  weight: min(backend.capacity, 1000)
}]
